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


def sample_request(n_passages: int = 6) -> dict[str, object]:
    """One sample question with its gold passage among the gold passages of other questions (gold third,
    not first, so an order that helps shows): what the inspector's "Load the sample" fills in."""
    questions, passages = load_sample()
    first = next(q for q in questions if "earswick" in str(q["question"]))
    others = [q for q in questions if q is not first][: n_passages - 1]
    ids = [str(q["gold_id"]) for q in others]
    ids.insert(min(2, len(ids)), str(first["gold_id"]))
    chosen = [passages[i] for i in ids if i in passages]
    return {
        "question": first["question"],
        "answers": first["answers"],
        "passages": [{"id": p["id"], "title": p.get("title", ""), "text": p["text"]} for p in chosen],
    }
