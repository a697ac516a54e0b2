"""A FAISS index over normalized sentence-transformers embeddings, with its passages in SQLite.

On disk, a directory holds `index.faiss`, `docs.sqlite` (table `docs`: rowid = FAISS id, id, title, text,
metadata JSON) and `manifest.json`. The index path is a symlink to a version folder beside it
(`.index.v-<pid>-<id>`). Every write (build or add) fills a new version folder, then swaps the symlink in
one atomic rename, so a failure half-way (a malformed corpus line, a full disk, Ctrl-C, kill -9) leaves the
previous index exactly as it was and readers always find one; version folders of killed builds are
removed by the next build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ragctx.io import process_alive
from ragctx.types import Passage

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.sqlite"
MANIFEST_FILE = "manifest.json"
INDEX_TYPES = ("flat", "hnsw", "ivf")
HNSW_EF_SEARCH = 64
# FAISS wants at least this many training points per IVF list; fewer gives poor centroids.
IVF_POINTS_PER_LIST = 39
IVF_MAX_NPROBE = 16
_SQL_CHUNK = 500  # well below SQLite's limit on bound parameters

_SCHEMA = """
CREATE TABLE docs (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class AddResult:
    added: int
    skipped_duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    embedder: str
    dim: int
    index_type: str
    count: int
    format_version: int = FORMAT_VERSION
    ivf_nlist: int | None = None
    ivf_nprobe: int | None = None
    hnsw_m: int | None = None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid ragctx index manifest ({exc})") from None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def embedding_text(passage: Passage) -> str:
    """What gets embedded for a passage: the title helps when the text never names its subject."""
    return passage.titled_text


class FaissIndex:
    """A persistent dense index; implements `Retriever`. Create with `build`, load with `open`."""

    def __init__(self, directory: Path, embedder: SentenceTransformer, manifest: Manifest) -> None:
        self.directory = directory
        self.embedder = embedder
        self.manifest = manifest
        self._lock = threading.Lock()  # guards the SQLite connection and swaps of the loaded index
        self._index, self._db = _load(directory, manifest)

    # ---- creation and loading -------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        directory: str | Path,
        passages: Iterable[Passage],
        embedder: SentenceTransformer,
        embedder_name: str,
        index_type: str = "flat",
        ivf_nlist: int = 256,
        hnsw_m: int = 32,
        batch_size: int = 64,
        progress: bool = False,
    ) -> FaissIndex:
        """Index `passages` into `directory`, replacing any index there only once the new one is complete."""
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {index_type!r}; known: {', '.join(INDEX_TYPES)}")
        directory = Path(directory).expanduser()
        _check_replaceable(directory)
        dim = _embedder_dim(embedder)
        with _staging(directory) as tmp:
            db = _create_db(tmp / DOCS_FILE)
            try:
                index, count, nlist = _index_new(
                    db, passages, embedder, dim, index_type, ivf_nlist, hnsw_m, batch_size, progress
                )
                db.commit()
            finally:
                db.close()
            faiss.write_index(index, str(tmp / INDEX_FILE))
            manifest = Manifest(
                embedder=embedder_name,
                dim=dim,
                index_type=index_type,
                count=count,
                ivf_nlist=nlist if index_type == "ivf" else None,
                ivf_nprobe=min(IVF_MAX_NPROBE, nlist) if index_type == "ivf" else None,
                hnsw_m=hnsw_m if index_type == "hnsw" else None,
            )
            manifest.write(tmp / MANIFEST_FILE)
            _swap_in(tmp, directory)
        log.info("indexed %d passages into %s (%s)", count, directory, index_type)
        return cls(directory, embedder, manifest)

    @classmethod
    def open(cls, directory: str | Path, embedder: SentenceTransformer, embedder_name: str | None = None) -> FaissIndex:
        """Load the index in `directory`; its vectors must come from an embedder of the same dimension."""
        directory = Path(directory).expanduser()
        if not (directory / MANIFEST_FILE).is_file():
            raise FileNotFoundError(
                f"no ragctx index at {directory}; build one with `ragctx index build <files or globs>`"
            )
        manifest = Manifest.read(directory / MANIFEST_FILE)
        if manifest.format_version != FORMAT_VERSION:
            raise ValueError(
                f"index at {directory} has format version {manifest.format_version}, this ragctx reads "
                f"{FORMAT_VERSION}; rebuild it with `ragctx index build`"
            )
        dim = _embedder_dim(embedder)
        if manifest.dim != dim:
            raise ValueError(
                f"index at {directory} was built with embedder {manifest.embedder!r} ({manifest.dim}-dim "
                f"vectors) but the given embedder makes {dim}-dim vectors; use that embedder or rebuild"
            )
        if embedder_name is not None and embedder_name != manifest.embedder:
            log.warning("index was built with embedder %r, searching with %r", manifest.embedder, embedder_name)
        return cls(directory, embedder, manifest)

    # ---- writing ----------------------------------------------------------------------------------

    def add(self, passages: Iterable[Passage], progress: bool = False, batch_size: int = 64) -> AddResult:
        """Add passages whose ids are new; ids already indexed (or repeated in `passages`) are skipped."""
        with _staging(self.directory) as tmp:
            shutil.copytree(self.directory, tmp, dirs_exist_ok=True)
            index = faiss.read_index(str(tmp / INDEX_FILE))
            db = sqlite3.connect(tmp / DOCS_FILE)
            skipped: list[str] = []
            added = 0
            try:
                next_id = int(db.execute("SELECT COALESCE(MAX(rowid) + 1, 0) FROM docs").fetchone()[0])
                seen: set[str] = set()
                with _progress_bar(progress, passages, "adding") as bar:
                    for batch in _batches(passages, SORT_CHUNK):
                        known = _existing_ids(db, [p.id for p in batch])
                        fresh: list[Passage] = []
                        for passage in batch:
                            if passage.id in known or passage.id in seen:
                                skipped.append(passage.id)
                            else:
                                seen.add(passage.id)
                                fresh.append(passage)
                        if fresh:
                            ids = np.arange(next_id, next_id + len(fresh), dtype=np.int64)
                            texts = [embedding_text(p) for p in fresh]
                            vectors = _encode_sorted(self.embedder, texts, batch_size, bar)
                            _insert(db, ids, fresh)
                            index.add_with_ids(vectors, ids)
                            next_id += len(fresh)
                            added += len(fresh)
                        if bar is not None:
                            bar.update(len(batch) - len(fresh))  # the fresh ones moved it as they were encoded
                db.commit()
            finally:
                db.close()
            if added == 0:
                return AddResult(added=0, skipped_duplicates=skipped)
            faiss.write_index(index, str(tmp / INDEX_FILE))
            # From the copy, not self.manifest: the directory may have been rebuilt since it was opened.
            manifest = replace(Manifest.read(tmp / MANIFEST_FILE), count=int(index.ntotal))
            manifest.write(tmp / MANIFEST_FILE)
            with self._lock:
                self._db.close()  # the old directory is about to be renamed and deleted
                try:
                    _swap_in(tmp, self.directory)
                    self.manifest = manifest
                finally:
                    self._index, self._db = _load(self.directory, self.manifest)
        return AddResult(added=added, skipped_duplicates=skipped)

    # ---- reading ----------------------------------------------------------------------------------

    def search(self, query: str, top_k: int) -> list[Passage]:
        return self.search_many([query], top_k)[0]

    def search_many(self, queries: Sequence[str], top_k: int) -> list[list[Passage]]:
        """The `top_k` passages for each query, best first; `score` is the cosine similarity."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 (got {top_k})")
        if not queries:
            return []
        vectors = _encode(self.embedder, list(queries), batch_size=64)
        with self._lock:
            index = self._index
        scores, rowids = index.search(vectors, min(top_k, int(index.ntotal)))
        wanted = sorted({int(r) for r in rowids.ravel() if r >= 0})
        with self._lock:  # add() only appends, so these rowids mean the same in a newer store
            by_rowid = _fetch(self._db, "rowid", wanted)
        return [
            [replace(by_rowid[int(r)], score=float(s)) for s, r in zip(row_scores, row_ids, strict=True) if r >= 0]
            for row_scores, row_ids in zip(scores, rowids, strict=True)
        ]

    def get(self, ids: Sequence[str]) -> list[Passage]:
        """The passages with these ids, in this order; KeyError names any id not in the index."""
        with self._lock:
            by_id = {p.id: p for p in _fetch(self._db, "id", list(dict.fromkeys(ids))).values()}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"not in the index: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        return [by_id[i] for i in ids]

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---- helpers ----------------------------------------------------------------------------------------


def _embedder_dim(embedder: SentenceTransformer) -> int:
    # sentence-transformers 6 renamed the method and deprecated the old name; older versions lack the new.
    method = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    dim = method()
    if not dim:
        raise ValueError("the embedder does not report its embedding dimension")
    return int(dim)


def _encode(embedder: SentenceTransformer, texts: list[str], batch_size: int) -> np.ndarray:
    vectors = embedder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


# Passages read, length-sorted and encoded together (bounded memory on any corpus size).
SORT_CHUNK = 2048


def _encode_sorted(embedder: SentenceTransformer, texts: list[str], batch_size: int, bar: Any) -> np.ndarray:
    """`_encode` in length order, one batch at a time so the bar moves: batches of similar lengths pad
    little (encoding 64-passage batches in input order ran at 0.58x of one sorted `encode` call)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.empty((len(texts), _embedder_dim(embedder)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = _encode(embedder, [texts[i] for i in rows], batch_size)
        if bar is not None:
            bar.update(len(rows))
    return out


def _batches(passages: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(passages)
    while batch := list(islice(iterator, size)):
        yield batch


@contextmanager
def _progress_bar(enabled: bool, passages: Iterable[Passage], label: str) -> Iterator[Any]:
    """A tqdm bar counting passages (so it shows passages/s), or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    total = len(passages) if isinstance(passages, Sized) else None
    fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    with tqdm(total=total, desc=label, unit="passage", bar_format=fmt if total else None) as bar:
        yield bar


def _index_new(
    db: sqlite3.Connection,
    passages: Iterable[Passage],
    embedder: SentenceTransformer,
    dim: int,
    index_type: str,
    ivf_nlist: int,
    hnsw_m: int,
    batch_size: int,
    progress: bool,
) -> tuple[Any, int, int]:
    """Embed and store every passage; returns (FAISS index, count, IVF lists used)."""
    # IVF must be trained before vectors go in, on all of them, so they wait in memory until the end.
    pending: list[np.ndarray] | None = [] if index_type == "ivf" else None
    index: Any = None if index_type == "ivf" else _empty_index(index_type, dim, hnsw_m)
    seen: set[str] = set()
    count = 0
    with _progress_bar(progress, passages, "indexing") as bar:
        for batch in _batches(passages, SORT_CHUNK):
            for passage in batch:
                if passage.id in seen:
                    raise ValueError(f"duplicate passage id {passage.id!r}; ids must be unique within a corpus")
                seen.add(passage.id)
            ids = np.arange(count, count + len(batch), dtype=np.int64)
            vectors = _encode_sorted(embedder, [embedding_text(p) for p in batch], batch_size, bar)
            _insert(db, ids, batch)
            if pending is not None:
                pending.append(vectors)
            else:
                index.add_with_ids(vectors, ids)
            count += len(batch)
    if count == 0:
        raise ValueError("no passages to index")
    nlist = 0
    if pending is not None:
        vectors = np.concatenate(pending)
        nlist = max(1, min(ivf_nlist, count // IVF_POINTS_PER_LIST))
        index = _trained_ivf(vectors, dim, nlist)
        index.add_with_ids(vectors, np.arange(count, dtype=np.int64))
    return index, count, nlist


def _empty_index(index_type: str, dim: int, hnsw_m: int) -> Any:
    if index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = HNSW_EF_SEARCH
    return faiss.IndexIDMap2(hnsw)


def _trained_ivf(vectors: np.ndarray, dim: int, nlist: int) -> Any:
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = min(IVF_MAX_NPROBE, nlist)
    return index


def _create_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute(_SCHEMA)
    return db


def _insert(db: sqlite3.Connection, rowids: np.ndarray, passages: list[Passage]) -> None:
    rows = [(int(rowid), p.id, p.title, p.text, _metadata_json(p)) for rowid, p in zip(rowids, passages, strict=True)]
    db.executemany("INSERT INTO docs (rowid, id, title, text, metadata) VALUES (?, ?, ?, ?, ?)", rows)


def _metadata_json(passage: Passage) -> str:
    try:
        return json.dumps(passage.metadata, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata of passage {passage.id!r} is not JSON-serializable ({exc})") from None


def _existing_ids(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    return {p.id for p in _fetch(db, "id", ids).values()}


def _fetch(db: sqlite3.Connection, column: str, keys: Sequence[int | str]) -> dict[int, Passage]:
    """Passages whose `column` ("rowid" or "id") is in `keys`, by rowid."""
    found: dict[int, Passage] = {}
    for start in range(0, len(keys), _SQL_CHUNK):
        chunk = list(keys[start : start + _SQL_CHUNK])
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT rowid, id, title, text, metadata FROM docs WHERE {column} IN ({marks})"
        for rowid, doc_id, title, text, metadata in db.execute(sql, chunk):
            found[rowid] = Passage(id=doc_id, text=text, title=title, metadata=json.loads(metadata))
    return found


def _load(directory: Path, manifest: Manifest) -> tuple[Any, sqlite3.Connection]:
    for name in (INDEX_FILE, DOCS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"index at {directory} is incomplete ({name} is missing); rebuild it")
    index = faiss.read_index(str(directory / INDEX_FILE))
    if manifest.ivf_nprobe:
        faiss.extract_index_ivf(index).nprobe = manifest.ivf_nprobe
    if index.ntotal != manifest.count:
        raise ValueError(
            f"index at {directory} is inconsistent ({index.ntotal} vectors, manifest says {manifest.count}); rebuild it"
        )
    # Read-only: writes only ever happen in a staging copy. Searches may come from several threads.
    db = sqlite3.connect(f"file:{directory / DOCS_FILE}?mode=ro", uri=True, check_same_thread=False)
    return index, db


def _check_replaceable(directory: Path) -> None:
    """Refuse to replace a non-empty directory that is not an index: build must never delete user files."""
    if directory.exists():
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()) and not (directory / MANIFEST_FILE).is_file():
            raise FileExistsError(f"{directory} is not empty and holds no ragctx index; refusing to replace it")


def _version_prefix(directory: Path) -> str:
    return f".{directory.name}.v-"


def _remove_stale_versions(directory: Path) -> None:
    """Version folders nothing points at, left by a killed build (its process is gone), and leftovers of
    the layout before versioned folders (`.tmp-*`, `.old-*`)."""
    current = directory.resolve() if directory.is_symlink() else None
    for path in directory.parent.glob(f".{directory.name}.*"):
        if not path.is_dir() or path.is_symlink() or path.resolve() == current:
            continue
        name = path.name
        if name.startswith(_version_prefix(directory)):
            pid = name[len(_version_prefix(directory)) :].split("-", 1)[0]
            if pid.isdigit() and process_alive(int(pid)):
                continue  # another build in progress
        elif not (name.startswith(f".{directory.name}.tmp-") or name.startswith(f".{directory.name}.old-")):
            continue
        log.info("removing a stale index build folder %s", path)
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _staging(directory: Path) -> Iterator[Path]:
    """A fresh version folder beside `directory`, removed afterwards unless it was swapped in."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_versions(directory)
    # mkdir (not mkdtemp) so the index directory gets the usual permissions of the user's umask.
    tmp = directory.with_name(f"{_version_prefix(directory)}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if not (directory.is_symlink() and directory.resolve() == tmp.resolve()):
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    """Point `target`, a symlink, at the version folder `new` in one atomic rename (there is never a
    moment without an index), then delete the version it pointed at. An index directory from before
    versioned folders is moved aside once, then replaced the same way."""
    previous = target.resolve() if target.is_symlink() else None
    if target.exists() and not target.is_symlink():
        previous = target.with_name(f"{_version_prefix(target)}legacy-{uuid.uuid4().hex[:8]}")
        os.rename(target, previous)
    link = target.with_name(f".{target.name}.link-{uuid.uuid4().hex[:8]}")
    os.symlink(new.name, link)  # relative: the index folder and its versions move together
    try:
        os.replace(link, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        raise
    if previous is not None and previous != new.resolve():
        shutil.rmtree(previous, ignore_errors=True)
