"""Sentence and fixed-token segmentation keep exact character offsets."""

from __future__ import annotations

import pytest

from ragctx.segmentation import fixed_token_segments, sentence_offsets, sub_sentence_offsets


def test_sentences_of_real_passages_are_exact_slices_in_order(nq20_rows):
    for row in nq20_rows[:10]:
        for p in row["passages"]:
            text = p["text"]
            spans = sentence_offsets(text)
            assert spans, text
            prev_end = 0
            for start, end in spans:
                assert prev_end <= start < end <= len(text)
                assert text[start:end] == text[start:end].strip()
                assert not text[prev_end:start].strip(), "no text may fall between sentences"
                prev_end = end
            assert not text[prev_end:].strip()


def test_abbreviations_do_not_split_sentences():
    text = "Dr. Smith went to Washington D.C. on Jan. 5. He left."
    assert [text[a:b] for a, b in sentence_offsets(text)] == [
        "Dr. Smith went to Washington D.C. on Jan. 5.",
        "He left.",
    ]


def test_repeated_sentences_get_their_own_offsets():
    text = "He said hi. He said hi. He said hi."
    assert sentence_offsets(text) == [(0, 11), (12, 23), (24, 35)]


def test_sub_sentences_are_offsets_into_the_whole_text():
    text = "Intro. First one. Second one. Outro."
    start = text.index("First")
    end = text.index(" Outro")
    assert [text[a:b] for a, b in sub_sentence_offsets(text, start, end)] == ["First one.", "Second one."]


@pytest.mark.parametrize("size", [1, 7, 20, 1000])
def test_fixed_token_segments_tile_the_text_with_the_target_tokenizer(engine, nq20_rows, size):
    counter = engine.counter
    text = nq20_rows[0]["passages"][0]["text"]
    segments = fixed_token_segments(counter, text, size)
    assert segments[0][0] == 0 and segments[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:], strict=False))
    total = counter.count(text)
    assert len(segments) == -(-total // size)
    with pytest.raises(ValueError):
        fixed_token_segments(counter, text, 0)
