"""The bundled sample corpus (Wikipedia, CC BY-SA; see data/ATTRIBUTION.md)."""

from pathlib import Path


def sample_corpus_path() -> Path:
    return Path(__file__).parent / "data" / "sample_corpus.jsonl.gz"
