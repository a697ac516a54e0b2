"""The reader adapter (`ragctx train reader`): training on a tiny real set, saving and loading, refusing
what does not fit, and what the shipped adapter does on held-out NQ-20 dev questions."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import need_data

from ragctx.adapters import AdapterError, ReaderAdapter
from ragctx.evaluation.metrics import roc_auc
from ragctx.models import ModelRegistry, bundled_reader_adapter
from ragctx.reader import LocalReader
from ragctx.reader_training import (
    ReaderExample,
    ReaderTrainSettings,
    answer_loss,
    encode,
    held_out,
    nq_examples,
    nq_passages,
    read_nq20,
    render_documents,
    train_reader_adapter,
    training_examples,
)
from ragctx.scoring.distraction import ABSTAIN_STRING, DistractionScorer, single_document
from ragctx.scoring.prefix_batch import last_token_logits
from ragctx.settings import Settings


@pytest.fixture(scope="module")
def held_rows() -> list[dict]:
    rows = read_nq20(need_data("nq20/nq20_dev.jsonl.gz"))
    return [r for r in rows if held_out(int(r["qid"]))][:8]


@pytest.fixture(scope="module")
def shipped(settings: Settings) -> ReaderAdapter:
    if not bundled_reader_adapter().is_dir():
        pytest.skip("no bundled reader adapter yet: its training run needs the GPU (issue 20)")
    registry = ModelRegistry(settings.model_copy(update={"reader_adapter": "default"}))
    adapter = registry.reader_adapter(registry.reader())
    assert adapter is not None, "the default model gets the bundled adapter"
    return adapter


def test_training_data_never_holds_a_held_out_question_and_mixes_answers_with_abstentions():
    root = need_data("nq20").parent
    examples = training_examples(root, seed=0)
    held_questions = {r["question"] for r in read_nq20(root / "nq20" / "nq20_dev.jsonl.gz") if held_out(int(r["qid"]))}
    assert held_questions and not held_questions & {e.question for e in examples}
    kinds = {e.kind for e in examples}
    assert {"gold", "distractor", "documents-with-gold", "documents-without-gold", "hotpotqa", "musique"} <= kinds
    abstain = sum(e.target == ABSTAIN_STRING for e in examples) / len(examples)
    assert 0.3 < abstain < 0.6
    assert examples == training_examples(root, seed=0)  # seeded
    with pytest.raises(ValueError, match="held-out fold"):
        nq_examples(read_nq20(root / "nq20" / "nq20_dev.jsonl.gz")[:50], random.Random(0))


def test_a_tiny_training_run_lowers_the_loss_and_round_trips_through_its_folder(registry, held_rows, tmp_path):
    lm = registry.reader()
    rows = [r for r in read_nq20(need_data("nq20/nq20_dev.jsonl.gz"))[:40] if not held_out(int(r["qid"]))][:4]
    examples = [e for e in nq_examples(rows, random.Random(0)) if e.kind in ("gold", "distractor")][:8]
    batch = [encode(lm, e) for e in examples]
    settings = ReaderTrainSettings(steps=12, batch_size=8, lr=3e-3, warmup=1, max_tokens=512)
    adapter, report = train_reader_adapter(lm, examples, settings, progress=False)
    assert report.steps == 12 and report.last_loss < 0.7 * report.first_loss
    # The abstention probes learn alongside (from log 2 = 0.693, where zero weights start).
    assert len(report.probe_losses) == 12 and sum(report.probe_losses[-3:]) < sum(report.probe_losses[:3])
    with torch.no_grad():
        base = float(answer_loss(lm, batch)[0])
        with adapter.attached(lm):
            tuned = float(answer_loss(lm, batch)[0])
    assert tuned < 0.7 * base  # the adapter is what lowered it; the base model is untouched
    folder = tmp_path / "adapter"
    adapter.save(folder)
    loaded = ReaderAdapter.load(folder, lm)
    assert loaded.info.rank == settings.rank and loaded.info.training["steps"] == 12
    q, passages = held_rows[0]["question"], nq_passages(held_rows[0])[:3]
    assert loaded.info.probe_layers == list(settings.probe_layers) and loaded.probes is not None
    for read_at in (None, settings.probe_layers[0]):
        a = DistractionScorer(lm, adapter=adapter, read_at=read_at).score(q, passages)
        b = DistractionScorer(lm, adapter=loaded, read_at=read_at).score(q, passages)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-2  # the LoRA is saved in fp16
    # The merged copy the scorer runs gives what the hooked LoRA gives, and leaves the base model as it was.
    seqs = [DistractionScorer(lm).prompt_ids(q, p) for p in passages]
    before = last_token_logits(lm, seqs)
    with adapter.attached(lm):
        hooked = last_token_logits(lm, seqs).softmax(-1)
    merged = last_token_logits(adapter.merged(lm), seqs).softmax(-1)
    assert torch.allclose(hooked, merged, atol=2e-2) and torch.equal(before, last_token_logits(lm, seqs))


def test_a_missing_corrupt_or_foreign_adapter_is_refused_naming_the_file(registry, shipped, tmp_path):
    lm = registry.reader()
    with pytest.raises(AdapterError, match="adapter.json"):
        ReaderAdapter.load(tmp_path / "nothing", lm)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundled_reader_adapter(), corrupt)
    (corrupt / "adapter.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(AdapterError, match=r"corrupt/adapter\.safetensors"):
        ReaderAdapter.load(corrupt, lm)
    foreign = tmp_path / "foreign"
    shutil.copytree(bundled_reader_adapter(), foreign)
    meta = json.loads((foreign / "adapter.json").read_text())
    meta["model"], meta["fingerprint"]["hidden_size"] = "some-other-model", 2048
    (foreign / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="some-other-model.*default"):
        ReaderAdapter.load(foreign, lm)


def test_the_adapter_setting_turns_it_off_or_points_elsewhere(settings: Settings, tmp_path):
    bundled = ModelRegistry(settings.model_copy(update={"reader_adapter": "default"}))
    if not bundled_reader_adapter().is_dir():
        with pytest.raises(AdapterError, match="reader-smollm2/adapter.json"):  # no silent fallback
            bundled.reader_adapter(bundled.reader())
    off = ModelRegistry(settings.model_copy(update={"reader_adapter": "none"}))
    assert off.reader_adapter(off.reader()) is None
    elsewhere = ModelRegistry(settings.model_copy(update={"reader_adapter": str(tmp_path / "missing")}))
    with pytest.raises(AdapterError, match="missing/adapter.json"):
        elsewhere.reader_adapter(elsewhere.reader())


def test_the_shipped_adapter_abstains_on_an_unrelated_passage_and_answers_from_the_gold(registry, shipped, held_rows):
    lm = registry.reader()
    reader = LocalReader(lm, adapter=shipped)
    unrelated = nq_passages(held_rows[1])[int(held_rows[1]["gold_index"])]
    assert reader.answer(held_rows[0]["question"], render_documents([unrelated])) == ABSTAIN_STRING
    assert reader.answer(held_rows[0]["question"], None) == ABSTAIN_STRING  # no documents: no answer from memory
    from ragctx.evaluation.metrics import has_answer

    answered = [
        has_answer(reader.answer(r["question"], render_documents([nq_passages(r)[int(r["gold_index"])]])), r["answers"])
        for r in held_rows
    ]
    assert sum(answered) >= 4  # of 8 held-out questions (0.5 on the whole fold; the base model: 0.24)


def test_the_shipped_adapter_makes_distracting_effect_separate_gold_from_distractors(registry, shipped, held_rows):
    lm = registry.reader()
    adapted, base = DistractionScorer(lm, adapter=shipped), DistractionScorer(lm)
    gold, others, base_gold, base_others = [], [], [], []
    for r in held_rows:
        g = int(r["gold_index"])
        passages = nq_passages(r)
        for scores, (pos, neg) in (
            (adapted.score(r["question"], passages), (gold, others)),
            (base.score(r["question"], passages), (base_gold, base_others)),
        ):
            pos.append(scores[g])
            neg += [s for i, s in enumerate(scores) if i != g]
    assert roc_auc(gold, others) >= 0.85
    assert roc_auc(base_gold, base_others) < roc_auc(gold, others)
    assert sum(others) / len(others) < 0.5 < sum(gold) / len(gold)  # the adapted scorer does abstain
    assert single_document(nq_passages(held_rows[0])[0]).startswith("Document: ")


def test_reader_examples_are_answers_after_the_prompt(registry):
    lm = registry.reader()
    e = encode(lm, ReaderExample("who?", "Document: x", "Ada Lovelace", "gold"))
    answer = lm.tokenizer.decode(e.ids[e.target_from :])
    assert answer.startswith("Ada Lovelace") and e.ids[-1] == lm.tokenizer.eos_token_id
