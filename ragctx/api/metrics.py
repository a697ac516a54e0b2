"""Prometheus metrics of one service instance (its own registry, so several apps can live in a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ragctx.cache import SegmentCache
from ragctx.types import CompressedContext

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_seconds = Histogram(
            "ragctx_request_seconds",
            "Request latency by route (until the last byte of the response).",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "ragctx_stage_seconds", "Pipeline stage latency.", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens_in = Counter(
            "ragctx_tokens_in",
            "Context tokens before the pipeline (target tokenizer).",
            ["route"],
            registry=r,
        )
        self.tokens_out = Counter(
            "ragctx_tokens_out",
            "Context tokens after the pipeline (target tokenizer).",
            ["route"],
            registry=r,
        )
        self.cache_hits = Counter("ragctx_cache_hits", "Cache hits reported by pipeline stages.", registry=r)
        self.fallbacks = Counter(
            "ragctx_fallbacks",
            "Stages that fell back to a simpler method (details.fallback).",
            ["stage"],
            registry=r,
        )
        self.rejections = Counter(
            "ragctx_rejections",
            "Requests refused: busy (429), timeout (504), too_large (413).",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "ragctx_batch_size",
            "Items per micro-batch of model calls.",
            ["batcher"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )

    def observe_context(self, ctx: CompressedContext, route: str) -> None:
        self.tokens_in.labels(route).inc(ctx.tokens_in)
        self.tokens_out.labels(route).inc(ctx.tokens_out)
        for stat in ctx.stats:
            self.stage_seconds.labels(stat.name).observe(stat.ms / 1000)
            if stat.cache_hits:
                self.cache_hits.inc(stat.cache_hits)
            if stat.details.get("fallback"):
                self.fallbacks.labels(stat.name).inc()

    def watch_segment_cache(self, cache: Callable[[], SegmentCache]) -> None:
        """Export the segment cache's counters (read at scrape time, so nothing is double counted)."""
        self.registry.register(_SegmentCacheCollector(cache))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SegmentCacheCollector(Collector):
    def __init__(self, cache: Callable[[], SegmentCache]) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self.cache()
        family = CounterMetricFamily(
            "ragctx_segment_cache",
            "Segment cache events: hits, misses, bytes read/written, fallbacks (store down), corrupt entries.",
            labels=["event", "backend"],
        )
        for event, value in cache.stats.as_dict().items():
            family.add_metric([event, cache.backend], value)
        yield family
