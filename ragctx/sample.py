"""The bundled sample corpus (Wikipedia, CC BY-SA; see data/ATTRIBUTION.md)."""

from pathlib import Path


def sample_corpus_path() -> Path:
    return Path(__file__).parent / "data" / "sample_corpus.jsonl.gz"


def sample_questions_path() -> Path:
    return Path(__file__).parent / "data" / "sample_questions.jsonl"


def load_sample() -> tuple[list[dict[str, object]], dict[str, dict[str, str]]]:
    """(questions with answers and gold ids, passages by id) of the bundled sample."""
    import gzip
    import json

    with gzip.open(sample_corpus_path(), "rt", encoding="utf-8") as fh:
        passages = {row["id"]: row for row in map(json.loads, fh)}
    with open(sample_questions_path(), encoding="utf-8") as fh:
        questions = [json.loads(line) for line in fh if line.strip()]
    return questions, passages
