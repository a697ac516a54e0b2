"""FaissIndex over real nq20 passages with the default embedder: search quality, persistence, safe writes."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from ragctx.indexes import DocumentFormatError, FaissIndex, LangChainRetriever, Retriever, read_documents
from ragctx.models import load_embedder
from ragctx.types import Passage

DATA = Path(__file__).parents[1].parent / "shared" / "data"
CORPUS = DATA / "nq20" / "corpus.jsonl.gz"
INDEXED = 150  # passages in the shared flat index; the next ones are used for `add`


@pytest.fixture(scope="module")
def embedder() -> Any:
    return load_embedder("default", "cpu")


@pytest.fixture(scope="module")
def corpus() -> list[Passage]:
    if not CORPUS.is_file():
        pytest.skip(f"needs the shared nq20 corpus at {CORPUS}")
    return list(islice(read_documents([CORPUS], chunk_words=120), INDEXED + 30))


@pytest.fixture(scope="module")
def flat_dir(tmp_path_factory: pytest.TempPathFactory, corpus: list[Passage], embedder: Any) -> Path:
    directory = tmp_path_factory.mktemp("flat") / "index"
    FaissIndex.build(directory, corpus[:INDEXED], embedder, "default")
    return directory


@pytest.fixture()
def flat_copy(tmp_path: Path, flat_dir: Path) -> Path:
    """A private copy of the shared index, for tests that write."""
    directory = tmp_path / "store" / "index"
    shutil.copytree(flat_dir, directory)
    return directory


def own_question(passage: Passage) -> str:
    """A query a user might type for this passage: its title and first sentence."""
    return f"{passage.title}: {passage.text.split('. ')[0]}"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_search_finds_the_passage_a_question_is_about(flat_dir: Path, corpus: list[Passage], embedder: Any) -> None:
    index = FaissIndex.open(flat_dir, embedder)
    assert len(index) == INDEXED
    assert isinstance(index, Retriever)
    sample = random.Random(0).sample(corpus[:INDEXED], 30)
    results = index.search_many([own_question(p) for p in sample], top_k=3)
    hits = sum(p.id in [r.id for r in found] for p, found in zip(sample, results, strict=True))
    # Random top-3 would hit 3/150 of the time; a working index nearly always.
    assert hits >= 27
    first = index.search(own_question(sample[0]), top_k=5)
    assert len(first) == 5
    scores = [r.score for r in first if r.score is not None]
    assert len(scores) == 5
    assert all(-1.0 <= s <= 1.0001 for s in scores)  # cosine similarities
    assert scores == sorted(scores, reverse=True)
    assert first[0].metadata["source"] == str(CORPUS)


def test_reopened_index_gives_identical_results(flat_dir: Path, corpus: list[Passage], embedder: Any) -> None:
    queries = [own_question(p) for p in corpus[:10]]
    before = FaissIndex.open(flat_dir, embedder).search_many(queries, top_k=4)
    after = FaissIndex.open(flat_dir, embedder).search_many(queries, top_k=4)
    assert [[(p.id, p.title, p.text, p.metadata) for p in r] for r in before] == [
        [(p.id, p.title, p.text, p.metadata) for p in r] for r in after
    ]
    assert [p.score for r in before for p in r] == pytest.approx([p.score for r in after for p in r])
    manifest = json.loads((flat_dir / "manifest.json").read_text())
    assert manifest["embedder"] == "default"
    assert manifest["dim"] == 384
    assert manifest["index_type"] == "flat"
    assert manifest["count"] == INDEXED


def test_get_returns_passages_in_the_asked_order(flat_dir: Path, corpus: list[Passage], embedder: Any) -> None:
    index = FaissIndex.open(flat_dir, embedder)
    wanted = [corpus[7].id, corpus[2].id]
    assert [p.id for p in index.get(wanted)] == wanted
    assert index.get(wanted)[0].text == corpus[7].text
    with pytest.raises(KeyError, match="no-such-id"):
        index.get([corpus[0].id, "no-such-id"])


def test_add_makes_new_passages_findable_and_skips_duplicates(
    flat_copy: Path, corpus: list[Passage], embedder: Any
) -> None:
    index = FaissIndex.open(flat_copy, embedder)
    new = corpus[INDEXED:]
    assert index.search(own_question(new[0]), top_k=3)[0].id != new[0].id
    repeated = [corpus[0], corpus[1], new[3]]  # two already indexed, one repeated within this call
    result = index.add([*new, *repeated])
    assert result.added == len(new)
    assert result.skipped_duplicates == [corpus[0].id, corpus[1].id, new[3].id]
    assert len(index) == INDEXED + len(new)
    assert new[0].id in [p.id for p in index.search(own_question(new[0]), top_k=3)]
    reopened = FaissIndex.open(flat_copy, embedder)
    assert len(reopened) == INDEXED + len(new)
    assert new[5].id in [p.id for p in reopened.search(own_question(new[5]), top_k=3)]
    # One version folder is left: the one the index link points at (the previous one is deleted).
    assert sorted(p.name for p in flat_copy.parent.iterdir()) == sorted(["index", os.readlink(flat_copy)])
    assert index.add(corpus[:3]).added == 0


def test_malformed_jsonl_fails_build_and_leaves_the_old_index(flat_copy: Path, tmp_path: Path, embedder: Any) -> None:
    before = snapshot(flat_copy)
    bad = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            '{"id": "a", "text": "Paris is the capital of France."}',
            '{"text": "Rome is in Italy."}',
            '{"text": ',
        ],
    )
    # batch_size=1: the good lines are embedded and stored before the bad one is reached.
    with pytest.raises(DocumentFormatError, match=r"corpus\.jsonl:3: invalid JSON"):
        FaissIndex.build(flat_copy, read_documents([bad], 120), embedder, "default", batch_size=1)
    assert snapshot(flat_copy) == before
    assert sorted(p.name for p in flat_copy.parent.iterdir()) == ["index"]  # no temp dirs left
    assert len(FaissIndex.open(flat_copy, embedder)) == INDEXED


def test_malformed_jsonl_fails_add_and_leaves_the_index(flat_copy: Path, tmp_path: Path, embedder: Any) -> None:
    index = FaissIndex.open(flat_copy, embedder)
    before = snapshot(flat_copy)
    bad = write_jsonl(tmp_path / "more.jsonl", ['{"id": "x1", "text": "Oslo is in Norway."}', '{"id": "x2"}'])
    with pytest.raises(DocumentFormatError, match=r'more\.jsonl:2: missing "text"'):
        index.add(read_documents([bad], 120), batch_size=1)
    assert snapshot(flat_copy) == before
    assert sorted(p.name for p in flat_copy.parent.iterdir()) == ["index"]
    assert len(index) == INDEXED
    with pytest.raises(KeyError):
        index.get(["x1"])


def test_duplicate_ids_within_a_build_are_rejected(tmp_path: Path, embedder: Any) -> None:
    passages = [Passage(id="p1", text="one"), Passage(id="p2", text="two"), Passage(id="p1", text="three")]
    with pytest.raises(ValueError, match="'p1'"):
        FaissIndex.build(tmp_path / "index", passages, embedder, "default")
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_to_replace_a_directory_that_is_not_an_index(tmp_path: Path, embedder: Any) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        FaissIndex.build(tmp_path / "index", [Passage(id="a", text="x")], embedder, "default")
    assert (tmp_path / "index" / "notes.txt").read_text() == "keep me"


def test_build_rejects_nothing_to_index_and_unknown_types(tmp_path: Path, embedder: Any) -> None:
    with pytest.raises(ValueError, match="no passages"):
        FaissIndex.build(tmp_path / "index", [], embedder, "default")
    with pytest.raises(ValueError, match="unknown index type"):
        FaissIndex.build(tmp_path / "index", [Passage(id="a", text="x")], embedder, "default", index_type="lsh")
    assert list(tmp_path.iterdir()) == []


def test_open_explains_a_missing_index(tmp_path: Path, embedder: Any) -> None:
    with pytest.raises(FileNotFoundError, match="ragctx index build"):
        FaissIndex.open(tmp_path / "nowhere", embedder)


def test_open_rejects_an_embedder_of_another_dimension(flat_copy: Path, embedder: Any) -> None:
    manifest_path = flat_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dim"] = 768
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="768-dim"):
        FaissIndex.open(flat_copy, embedder)


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_index_types_build_and_search(
    index_type: str, tmp_path: Path, corpus: list[Passage], embedder: Any
) -> None:
    passages = corpus[:80]
    index = FaissIndex.build(tmp_path / "index", passages, embedder, "default", index_type=index_type, ivf_nlist=256)
    sample = passages[::8]
    results = FaissIndex.open(tmp_path / "index", embedder).search_many([own_question(p) for p in sample], 3)
    hits = sum(p.id in [r.id for r in found] for p, found in zip(sample, results, strict=True))
    assert hits >= len(sample) - 1
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["index_type"] == index_type
    if index_type == "ivf":
        assert manifest["ivf_nlist"] == 80 // 39  # clamped: too few passages for 256 lists
    added = index.add(corpus[80:84])
    assert added.added == 4
    assert corpus[81].id in [p.id for p in index.search(own_question(corpus[81]), 3)]


@dataclass
class FakeDocument:
    page_content: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeLangChainRetriever:
    documents: list[FakeDocument]
    queries: list[str] = field(default_factory=list)

    def invoke(self, query: str) -> list[FakeDocument]:
        self.queries.append(query)
        return self.documents


def test_langchain_adapter_maps_documents_to_passages() -> None:
    wrapped = FakeLangChainRetriever(
        [
            FakeDocument("Paris is in France.", {"id": "d1", "title": "Paris", "score": 0.9}),
            FakeDocument("Rome is in Italy.", {"source": "x.txt"}),
            FakeDocument("Oslo is in Norway."),
        ]
    )
    retriever = LangChainRetriever(wrapped)
    assert isinstance(retriever, Retriever)
    passages = retriever.search("capitals", top_k=2)
    assert wrapped.queries == ["capitals"]
    assert [(p.id, p.title, p.text, p.score) for p in passages] == [
        ("d1", "Paris", "Paris is in France.", 0.9),
        ("1", "", "Rome is in Italy.", None),
    ]
    assert passages[1].metadata == {"source": "x.txt"}
