"""The segment cache: typed values keyed by content, in process or in a real redis-server on loopback.

Keys of a segment are encoded once (pre-RoPE) and re-rotated to wherever the segment lands; Redis
faults never fail a request.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
import torch

from ragctx.api.metrics import ServiceMetrics
from ragctx.cache import (
    CachedValue,
    CorruptEntry,
    MemoryStore,
    RedisStore,
    SegmentCache,
    content_key,
)
from ragctx.cache.codec import decode, encode
from ragctx.compressors.evaluator_heads import calibrate_heads, needle_examples
from ragctx.engine import ContextEngine
from ragctx.scoring.lm_attention import HeadSelection, apply_rope, decoder_layers, question_attention
from ragctx.scoring.segment_kv import SegmentKVCache, rope_tables
from ragctx.settings import load_settings
from ragctx.state import Budget
from tests.conftest import need_data, passages_of

SELECTION = HeadSelection.of_heads([(2, 0), (3, 4), (5, 1)])


def redis_cache(url: str) -> SegmentCache:
    return SegmentCache(RedisStore(url, ttl_s=600, timeout_s=0.5), retry_after_s=0.0)


def memory_cache() -> SegmentCache:
    return SegmentCache(MemoryStore(256 * 1024 * 1024))


@pytest.fixture(scope="module")
def lm(exact_registry):
    return exact_registry.scorer()  # the tests compare cached keys with fresh ones to float32 rounding


@pytest.fixture(scope="module")
def blocks(nq20_rows, lm) -> tuple[list[list[int]], list[int]]:
    """Five real NQ passage blocks and a question, as token ids."""
    row = nq20_rows[3]
    tok = lm.tokenizer
    texts = [f"Document (Title: {p['title']}) {p['text']}\n" for p in row["passages"][:5]]
    segs = [tok.encode(t, add_special_tokens=False) for t in texts]
    return segs, tok.encode("\nQuestion: " + row["question"], add_special_tokens=False)


# ---- values as bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64])
def test_a_value_round_trips_bit_for_bit(dtype):
    t = (torch.randn(3, 2, 7, 5) * 100).to(dtype)
    value = CachedValue("kv", "model-a", {"k": t, "empty": torch.zeros(0, 4, dtype=dtype)}, {"rope": {"theta": 1e5}})
    back = decode(encode(value), "kv", "model-a")
    assert torch.equal(back.tensors["k"].view(torch.uint8), t.view(torch.uint8))
    assert back.tensors["empty"].shape == (0, 4) and back.meta == {"rope": {"theta": 1e5}}


def test_truncated_corrupt_or_foreign_bytes_are_refused():
    blob = encode(CachedValue("kv", "model-a", {"k": torch.randn(4, 4)}))
    flipped = bytearray(blob)
    flipped[-3] ^= 0xFF
    for bad, why in [
        (blob[:-5], "checksum"),
        (bytes(flipped), "checksum"),
        (b"garbage", "not a ragctx cache entry"),
    ]:
        with pytest.raises(CorruptEntry, match=why):
            decode(bad, "kv", "model-a")
    with pytest.raises(CorruptEntry, match="expected kv/model-b"):
        decode(blob, "kv", "model-b")
    with pytest.raises(CorruptEntry, match="expected concepts/model-a"):
        decode(blob, "concepts", "model-a")


def test_keys_depend_on_kind_model_layers_and_every_token():
    base = content_key("kv", "m", [1, 2, 3], "layers=0-5")
    assert base == content_key("kv", "m", [1, 2, 3], "layers=0-5")
    others = [
        content_key("concepts", "m", [1, 2, 3], "layers=0-5"),
        content_key("kv", "m2", [1, 2, 3], "layers=0-5"),
        content_key("kv", "m", [1, 2, 3], "layers=0-6"),
        content_key("kv", "m", [1, 2, 4], "layers=0-5"),
        content_key("kv", "m", [12, 3], "layers=0-5"),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_the_in_process_store_evicts_least_recently_used_beyond_its_byte_bound():
    store = MemoryStore(max_bytes=300)
    store.set_many({"a": b"x" * 100, "b": b"y" * 100, "c": b"z" * 100})
    store.get_many(["a"])  # a is now the most recently used
    store.set_many({"d": b"w" * 100})
    assert store.get_many(["a", "b", "c", "d"]) == [b"x" * 100, None, b"z" * 100, b"w" * 100]
    assert store.size_bytes == 300
    store.set_many({"huge": b"h" * 301})  # larger than the whole store: not kept, nothing evicted
    assert store.get_many(["huge", "a"]) == [None, b"x" * 100]


# ---- keys and values of segments --------------------------------------------------------------------


def test_segments_round_trip_through_redis_bit_for_bit(redis_server, lm, blocks):
    segs, _ = blocks
    cold = SegmentKVCache(lm, redis_cache(redis_server.url))
    fresh, hits = cold.segments(segs, depth=3)
    assert hits == 0 and cold.cache.stats.bytes_written > 0
    warm = SegmentKVCache(lm, redis_cache(redis_server.url))  # another process would see the same
    again, hits = warm.segments(segs, depth=3)
    assert hits == len(segs)
    for a, b in zip(fresh, again, strict=True):
        assert a.keys.dtype == torch.float16 and a.keys.shape == (4, 3, len(a.keys[0, 0]), 64)
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def _keys_of_a_fresh_prefill(lm: Any, ids: list[int], start: int, layers: list[int]) -> dict[int, torch.Tensor]:
    """Post-RoPE keys of `ids` encoded alone at positions start..start+n-1 (the ground truth)."""
    captured: dict[int, torch.Tensor] = {}

    def hook_for(layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            k = module.k_proj(hidden).view(1, hidden.shape[1], -1, module.head_dim).transpose(1, 2)
            captured[layer] = apply_rope(k, cos, sin)[0]

        return hook

    handles = [decoder_layers(lm)[i].self_attn.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in layers]
    try:
        with torch.inference_mode():
            lm.model(torch.tensor([ids]), position_ids=torch.arange(start, start + len(ids))[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return captured


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.float16, 2e-3)])
def test_rerotated_keys_match_a_fresh_prefill_at_the_new_position(lm, blocks, dtype, tolerance):
    """Tolerance: max |difference| / max |key|. In fp32 what remains is float rounding of other
    angles through the layers below; fp16 storage adds its 11-bit mantissa."""
    segment = blocks[0][1]
    (kv,) = SegmentKVCache(lm, memory_cache(), dtype=dtype).encode([segment], depth=5)
    start = 1234
    cos, sin = rope_tables(lm, torch.arange(start, start + len(segment)))
    truth = _keys_of_a_fresh_prefill(lm, segment, start, [0, 3, 5])
    for layer, expected in truth.items():
        moved = apply_rope(kv.keys[layer].float()[None], cos, sin)[0]
        assert (moved - expected).abs().max() / expected.abs().max() < tolerance, layer
        unmoved = kv.keys[layer].float()
        assert (unmoved - expected).abs().max() / expected.abs().max() > 0.1  # the rotation matters


def test_a_segment_encodes_to_the_same_bytes_alone_with_others_and_in_any_order(lm, blocks):
    """A content-addressed entry must not depend on what else was encoded with it, or a key would hold
    different bytes by history (a recomputed Redis entry would differ from the original)."""
    segs, _ = blocks
    kv = SegmentKVCache(lm, memory_cache())
    together = kv.encode(segs, depth=5, prefix=kv.prefix)
    backwards = kv.encode(segs[::-1], depth=5, prefix=kv.prefix)[::-1]
    for i, seg in enumerate(segs):
        (alone,) = kv.encode([seg], depth=5, prefix=kv.prefix)
        for other in (together[i], backwards[i]):
            assert torch.equal(alone.keys, other.keys) and torch.equal(alone.values, other.values), i
    # The bytes stored under a key, too.
    assert encode(kv._to_value(together[2], 5)) == encode(kv._to_value(kv.encode([segs[2]], 5, kv.prefix)[0], 5))


def test_one_segment_holding_the_whole_context_scores_like_a_full_prefill(lm, blocks):
    segs, question = blocks
    whole = [t for s in segs for t in s]
    kv = SegmentKVCache(lm, memory_cache())
    cached, _ = kv.question_attention([whole], question, SELECTION)
    prompt = torch.tensor([kv.prefix + whole + question])
    full = question_attention(lm, prompt, SELECTION, window=len(question)).tokens[len(kv.prefix) :]
    assert cached.shape == full.shape
    # Tolerance: 0.5% of the largest mass, from the fp16 storage of keys and values.
    assert (cached - full).abs().max() < 5e-3 * full.max()
    assert abs(cached.sum() - full.sum()) < 5e-3 * full.sum()


def test_a_warm_cache_scores_exactly_like_a_cold_one_without_encoding(lm, blocks):
    segs, question = blocks
    kv = SegmentKVCache(lm, memory_cache())
    cold, cold_hits = kv.question_attention(segs, question, SELECTION)
    written = kv.cache.stats.bytes_written
    warm, warm_hits = kv.question_attention(segs, question, SELECTION)
    assert (cold_hits, warm_hits) == (0, len(segs))
    assert kv.cache.stats.bytes_written == written  # nothing encoded or written again
    assert torch.equal(cold, warm)
    # Reordering the segments moves their scores with them (position-independent entries).
    moved, hits = kv.question_attention(segs[::-1], question, SELECTION)
    assert hits == len(segs) and moved.shape == cold.shape


def test_a_corrupt_entry_in_redis_is_deleted_and_recomputed(redis_server, lm, blocks):
    segs, question = blocks
    kv = SegmentKVCache(lm, redis_cache(redis_server.url))
    expected, _ = kv.question_attention(segs, question, SELECTION)
    client = redis.Redis.from_url(redis_server.url)
    key = kv.key(segs[2], depth=5)
    blob = client.get(key)
    assert blob is not None
    client.set(key, blob[: len(blob) // 2])  # truncated
    again, hits = kv.question_attention(segs, question, SELECTION)
    assert hits == len(segs) - 1 and kv.cache.stats.corrupt == 1
    assert torch.equal(again, expected)
    assert client.get(key) == blob  # recomputed and written back


def test_an_entry_of_the_wrong_shape_is_never_used(lm, blocks):
    segs, question = blocks
    kv = SegmentKVCache(lm, memory_cache())
    key = kv.key(segs[0], depth=5)
    wrong = CachedValue("kv", kv.owner, {"k": torch.zeros(6, 3, 2, 64), "v": torch.zeros(6, 3, 2, 64)})
    kv.cache.put_many({key: wrong})
    _, hits = kv.question_attention(segs[:1], question, SELECTION)
    assert hits == 0 and kv.cache.stats.corrupt == 1


def test_concurrent_writers_of_one_key_leave_one_readable_entry(redis_server):
    cache = redis_cache(redis_server.url)
    value = CachedValue("kv", "m", {"k": torch.arange(1000, dtype=torch.float16)})
    threads = [threading.Thread(target=cache.put_many, args=({"ragctx:seg:same": value},)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (back,) = cache.get_many(["ragctx:seg:same"], "kv", "m")
    assert back is not None and torch.equal(back.tensors["k"], value.tensors["k"])


# ---- the pipeline with Redis faults ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shallow_heads_dir(registry, tmp_path_factory):
    """A cache folder with evaluator heads calibrated on two needle examples (layers <= 4: fast)."""
    cache = tmp_path_factory.mktemp("heads-cache")
    user_models = load_settings().resolved_cache_dir() / "models"
    (cache / "models").symlink_to(user_models, target_is_directory=True)
    examples = needle_examples(need_data("needle_haystack/PaulGrahamEssays"), 2, context_chars=1200)
    calibrate_heads(registry.scorer(), cache, examples, max_layer=4, top=3)
    return cache


def test_requests_succeed_while_redis_is_down_and_the_cache_refills_after_restart(
    redis_server, registry, shallow_heads_dir, nq20_rows
):
    settings = load_settings(
        cache_dir=shallow_heads_dir, redis_url=redis_server.url, segment_cache_retry_s=0, segment_kv=True
    )
    engine = ContextEngine(settings, registry)
    row = nq20_rows[5]
    passages = passages_of(row)[:6]

    def ehpc_hits(question: str) -> int:
        ctx = engine.run(question, passages, method="ehpc", budget=Budget(tokens=120))
        assert 0 < ctx.tokens_out <= 120
        return next(s.cache_hits for s in ctx.stats if s.name == "ehpc")

    assert ehpc_hits(row["question"]) == 0
    assert ehpc_hits("who wrote it?") == len(passages)
    redis_server.kill()
    assert ehpc_hits(row["question"]) == 0  # computed, not failed
    assert engine.segment_cache.stats.fallbacks >= 1
    redis_server.start()  # empty after the restart (no persistence)
    assert ehpc_hits(row["question"]) == 0  # refills...
    assert ehpc_hits("and when?") == len(passages)  # ...and serves again


def test_cached_segments_rank_tokens_like_a_full_prefill(lm, nq20_rows):
    """The approximation (segments encoded apart) keeps the token ranking: Spearman >= 0.8 over 8
    passages (measured about 0.95 at layers 2-5, 0.9 at 21-23)."""
    row = nq20_rows[9]
    tok = lm.tokenizer
    texts = [f"Document (Title: {p['title']}) {p['text']}\n" for p in row["passages"][:8]]
    segs = [tok.encode(t, add_special_tokens=False) for t in texts]
    question = tok.encode("\nQuestion: " + row["question"], add_special_tokens=False)
    kv = SegmentKVCache(lm, memory_cache())
    cached, _ = kv.question_attention(segs, question, SELECTION)
    whole = [t for s in segs for t in s]
    prompt = torch.tensor([kv.prefix + whole + question])
    full = question_attention(lm, prompt, SELECTION, window=len(question)).tokens[len(kv.prefix) :]
    ranks = torch.stack([cached[: len(whole)].argsort().argsort(), full[: len(whole)].argsort().argsort()]).float()
    assert torch.corrcoef(ranks)[0, 1] >= 0.8


@pytest.mark.parametrize("segment_kv", [True, False])
def test_ehpc_meets_the_budget_with_cached_segments_and_with_a_full_prefill(
    registry, shallow_heads_dir, nq20_rows, segment_kv
):
    engine = ContextEngine(load_settings(cache_dir=shallow_heads_dir, segment_kv=segment_kv), registry)
    row = nq20_rows[8]
    ctx = engine.run(row["question"], passages_of(row)[:8], method="ehpc", budget=Budget(tokens=150))
    assert 100 < ctx.tokens_out <= 150
    ehpc = next(s for s in ctx.stats if s.name == "ehpc")
    assert ehpc.details.get("cache_misses", 0) == (8 if segment_kv else 0)


def test_cache_counters_are_exported_as_metrics():
    cache = memory_cache()
    cache.put_many({"ragctx:seg:x": CachedValue("kv", "m", {"k": torch.ones(3)})})
    cache.get_many(["ragctx:seg:x", "ragctx:seg:y"], "kv", "m")
    metrics = ServiceMetrics()
    metrics.watch_segment_cache(lambda: cache)
    text = metrics.exposition().decode()
    assert 'ragctx_segment_cache_total{backend="memory",event="hits"} 1.0' in text
    assert 'ragctx_segment_cache_total{backend="memory",event="misses"} 1.0' in text
    assert 'ragctx_segment_cache_total{backend="memory",event="fallbacks"} 0.0' in text


def test_the_service_serves_segments_from_a_real_redis_and_reports_it(
    redis_server, registry, shallow_heads_dir, nq20_rows
):
    """The real app (uvicorn on loopback) with a real redis-server: the second question over the same
    passages is scored from Redis, /readyz says Redis is ok, /metrics counts the Redis hits."""
    import httpx
    from test_api import running

    from ragctx.api import create_app

    settings = load_settings(cache_dir=shallow_heads_dir, redis_url=redis_server.url, segment_kv=True)
    row = nq20_rows[6]
    passages = row["passages"][:5]
    with running(create_app(settings, registry)) as url, httpx.Client(base_url=url, timeout=120) as http:
        assert http.get("/readyz").json()["checks"]["redis"] == "ok"
        stats = []
        for question in (row["question"], "who is it about?"):
            body = {"question": question, "passages": passages, "budget": 120, "method": "ehpc"}
            response = http.post("/v1/compress", json=body)
            assert response.status_code == 200, response.text
            assert 0 < response.json()["tokens_out"] <= 120
            stats.append(next(s for s in response.json()["stats"] if s["name"] == "ehpc"))
        assert [s["cache_hits"] for s in stats] == [0, len(passages)]
        metrics = http.get("/metrics").text
    assert f'ragctx_segment_cache_total{{backend="redis",event="hits"}} {float(len(passages))}' in metrics
    assert redis.Redis.from_url(redis_server.url).dbsize() >= len(passages)
