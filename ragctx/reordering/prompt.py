"""The reader prompt as token ids, with the tokens of each passage's body marked by its slot.

Model-aware orderings measure attention on the prompt the target model will actually read: the
rendered context (ragctx.state.render) inside the reader's QA prompt and chat template.
Headers and template tokens belong to no slot (-1), so attention sinks never count for a passage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ragctx.models import LanguageModel
from ragctx.reader import qa_prompt
from ragctx.scoring.lm_attention import HeadSelection, question_attention
from ragctx.state import passage_body, passage_header
from ragctx.types import PassageResult


@dataclass
class SlottedPrompt:
    input_ids: torch.Tensor  # (1, N)
    slot_ids: torch.Tensor  # (N,), -1 outside passage bodies
    slot_lengths: list[int]  # tokens per slot


def template_id(lm: LanguageModel) -> str:
    """Changes whenever the prompt wording or the chat template changes (profiles depend on both)."""
    chat = getattr(lm.tokenizer, "chat_template", None) or ""
    return hashlib.sha256((qa_prompt("{q}", "{c}") + str(chat)).encode()).hexdigest()[:10]


def slotted_prompt(lm: LanguageModel, question: str, passages: Sequence[PassageResult]) -> SlottedPrompt:
    blocks, bodies = [], []
    for i, p in enumerate(passages, 1):
        header, body = passage_header(i, p.passage), passage_body(p)
        blocks.append(header + body)
        bodies.append(body)
    context = "\n".join(blocks)
    tok = lm.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": qa_prompt(question, context)}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert isinstance(text, str)
    # Character ranges of each body inside the final prompt text.
    ranges = []
    cursor = text.index(context)
    for header_block, body in zip(blocks, bodies, strict=True):
        start = text.index(header_block, cursor) + len(header_block) - len(body)
        ranges.append((start, start + len(body)))
        cursor = start + len(body)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    slots = torch.full((len(enc["input_ids"]),), -1, dtype=torch.long)
    lengths = [0] * len(passages)
    j = 0
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        while j < len(ranges) and a >= ranges[j][1]:
            j += 1
        # A token counts for a passage if it overlaps its body (" Alpha" starts on the space before it).
        if j < len(ranges) and min(b, ranges[j][1]) - max(a, ranges[j][0]) > 0:
            slots[t] = j
            lengths[j] += 1
    return SlottedPrompt(torch.tensor([enc["input_ids"]]), slots, lengths)


def slot_attention(
    lm: LanguageModel,
    question: str,
    passages: Sequence[PassageResult],
    layers: tuple[int, ...] | None = None,
    aggregate: str = "sum",
) -> list[float]:
    """Attention the last prompt position pays to each passage's body (sum, or per-token mean)."""
    sp = slotted_prompt(lm, question, passages)
    selection = HeadSelection(layers) if layers else HeadSelection.all_layers(lm)
    att = question_attention(lm, sp.input_ids, selection, window=1, segment_ids=sp.slot_ids, num_segments=len(passages))
    assert att.segments is not None
    values = att.segments
    if aggregate == "mean":
        values = values / torch.tensor([max(n, 1) for n in sp.slot_lengths], dtype=torch.float32)
    return [float(x) for x in values]
