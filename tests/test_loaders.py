"""Corpus loaders: JSONL rows, text and Markdown chunking, error messages that name file and line."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from ragctx.indexes import DocumentFormatError, expand_inputs, read_documents
from ragctx.types import Passage

DATA = Path(__file__).parents[1].parent / "shared" / "data"
CORPUS = DATA / "nq20" / "corpus.jsonl.gz"


def read(paths: list[Path], chunk_words: int = 120) -> list[Passage]:
    return list(read_documents(paths, chunk_words))


def words_of(passages: list[Passage]) -> list[str]:
    return [w for p in passages for w in p.text.split()]


def test_real_corpus_reads_ids_titles_and_provenance() -> None:
    if not CORPUS.is_file():
        pytest.skip(f"needs the shared nq20 corpus at {CORPUS}")
    passages = read([CORPUS])
    assert len(passages) == 2600
    assert len({p.id for p in passages}) == 2600
    first = passages[0]
    assert first.id == "nq0"
    assert first.title == "List of Nobel laureates in Physics"
    assert first.text.startswith("The first Nobel Prize in Physics")
    assert first.metadata == {"source": str(CORPUS), "line": 1}


def test_jsonl_defaults_extra_keys_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text(
        '{"text": "alpha", "lang": "en"}\n\n   \n{"id": 7, "text": "beta", "title": "B", "url": "u"}\n',
        encoding="utf-8",
    )
    passages = read([path])
    assert [(p.id, p.title, p.text) for p in passages] == [("notes:1", "", "alpha"), ("7", "B", "beta")]
    assert passages[0].metadata == {"lang": "en", "source": str(path), "line": 1}
    assert passages[1].metadata == {"url": "u", "source": str(path), "line": 4}


def test_gzipped_jsonl_uses_the_stem_without_both_suffixes(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('{"text": "gamma"}\n')
    assert [p.id for p in read([path])] == ["docs:1"]


@pytest.mark.parametrize(
    ("third_line", "message"),
    [
        ('{"text": "x"', r"bad\.jsonl:3: invalid JSON \("),
        ('{"id": "c"}', r'bad\.jsonl:3: missing "text"'),
        ('{"text": 5}', r'bad\.jsonl:3: "text" must be a string'),
        ('["text"]', r"bad\.jsonl:3: expected a JSON object"),
        ('{"text": "x", "id": [1]}', r'bad\.jsonl:3: "id" must be'),
        ('{"text": "x", "title": 3}', r'bad\.jsonl:3: "title" must be a string'),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, third_line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"text": "a"}}\n{{"text": "b"}}\n{third_line}\n{{"text": "d"}}\n', encoding="utf-8")
    reader = read_documents([path], 120)
    assert [next(reader).text, next(reader).text] == ["a", "b"]  # lazily: good rows come before the error
    with pytest.raises(DocumentFormatError, match=message):
        next(reader)


def test_text_paragraphs_merge_and_cut_within_the_word_limit(tmp_path: Path) -> None:
    long_paragraph = " ".join(f"Sentence {i} has exactly six words." for i in range(10))  # 60 words
    text = f"Short one here.\n\nAnother short paragraph.\n\n{long_paragraph}\n\n" + "word " * 45 + "\n"
    path = tmp_path / "guide.txt"
    path.write_text(text, encoding="utf-8")
    passages = read([path], chunk_words=20)
    assert [p.id for p in passages] == [f"guide#{i}" for i in range(1, len(passages) + 1)]
    assert {p.title for p in passages} == {"guide"}
    assert all(len(p.text.split()) <= 20 for p in passages)
    assert passages[0].text == "Short one here.\n\nAnother short paragraph."  # merged, paragraph break kept
    long_pieces = [p for p in passages if "Sentence" in p.text]
    assert all(p.text.endswith("words.") for p in long_pieces)  # cut on sentence boundaries
    assert words_of(passages) == text.split()  # nothing lost, nothing reordered
    assert passages[0].metadata == {"source": str(path)}


def test_markdown_titles_are_the_nearest_heading(tmp_path: Path) -> None:
    path = tmp_path / "manual.md"
    path.write_text(
        "---\ntitle: ignored front matter\n---\n"
        "Preface text.\n\n"
        "# Intro\n\nWelcome to the manual.\n\n"
        "## Setup ##\n\nRun the installer.\n\n```sh\n# not a heading\nmake\n```\n\n"
        "## Empty\n"
        "### Deep\n\n" + "Many words here. " * 12 + "\n",
        encoding="utf-8",
    )
    passages = read([path], chunk_words=20)
    assert [(p.id, p.title) for p in passages] == [
        ("manual#1", "manual"),
        ("manual#2", "Intro"),
        ("manual#3", "Setup"),
        ("manual#4", "Deep"),
        ("manual#5", "Deep"),
    ]
    assert passages[0].text == "Preface text."
    assert "# not a heading" in passages[2].text
    assert all(len(p.text.split()) <= 20 for p in passages)
    assert "front matter" not in " ".join(p.text for p in passages)


def test_directories_are_walked_sorted_for_supported_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.markdown").write_text("# T\n\nsecond", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "skip.csv").write_text("ignored,in,directories", encoding="utf-8")
    assert [p.text for p in read([tmp_path])] == ["first", "second"]


def test_unknown_suffix_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DocumentFormatError, match=r"table\.csv: unsupported file type"):
        read([path])


def test_expand_inputs_globs_and_reports_patterns_that_match_nothing(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    assert expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "a.txt")]) == [
        tmp_path / "a.txt",
        tmp_path / "b.txt",
    ]
    assert expand_inputs([str(tmp_path / "**" / "*.md")]) == [tmp_path / "c.md"]
    with pytest.raises(FileNotFoundError, match=r"\*\.pdf"):
        expand_inputs([str(tmp_path / "*.pdf")])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        expand_inputs([os.path.join(tmp_path, "missing.txt")])
