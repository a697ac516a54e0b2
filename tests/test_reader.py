"""The local reader: batched answers are the answers one prompt at a time gives, in the caller's order."""

from __future__ import annotations

from ragctx.reader import LocalReader, qa_prompt
from ragctx.state import PipelineState, render
from tests.conftest import passages_of


def test_batched_answers_equal_one_at_a_time_in_order(registry, nq20_rows):
    reader = LocalReader(registry.reader(), max_new_tokens=8)
    requests: list[tuple[str, str | None]] = []
    for row in nq20_rows[:3]:
        state = PipelineState(row["question"])
        # Contexts of different lengths, so the batch really is padded.
        state.set_passages(passages_of(row)[: 2 + len(requests)])
        requests.append((row["question"], render(state.passages)))
    requests.append((nq20_rows[3]["question"], None))  # closed-book in the same batch
    alone = [reader.answer_many([r], batch_size=1)[0] for r in requests]
    batched = reader.answer_many(requests, batch_size=4)
    assert batched == alone
    assert all(isinstance(a, str) for a in batched) and any(batched)


def test_prompt_tokens_are_the_chat_template_tokens(registry):
    tok = registry.reader().tokenizer
    messages = [{"role": "user", "content": qa_prompt("who wrote hamlet", "Document [1] Hamlet is a play.")}]
    via_template = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok(text, add_special_tokens=False)["input_ids"] == list(via_template["input_ids"])
