"""Request and response models of the REST API (pydantic: this is the boundary)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ragctx.registry import SOFT_METHODS, known_stage_names, with_method
from ragctx.state import Budget
from ragctx.types import Passage


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" includes 3.0 (a number with no fraction), which a strict int refuses.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _id_as_text(value: Any) -> Any:
    # Callers' ids are often integers; passage ids are strings everywhere inside.
    value = _integral(value)
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# An integer as JSON Schema has it: 3 and 3.0, never true, "3" or 3.5.
Integer = Annotated[StrictInt, BeforeValidator(_integral)]
# The bound inside the type: `Field(ge=1)` on `Integer | None` would reach the schema as a bare "ge".
PositiveInteger = Annotated[StrictInt, Field(ge=1), BeforeValidator(_integral)]


# Integers are accepted (as strings) and the schema says so.
PassageId = Annotated[
    str,
    BeforeValidator(_id_as_text),
    Field(min_length=1),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]}),
]


class PassageIn(BaseModel):
    """A caller's passage. Keys other than these go into `metadata`, as in `ragctx compress`."""

    model_config = ConfigDict(extra="allow")

    id: PassageId
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    score: StrictFloat | None = Field(default=None, description="The caller's retrieval score, if any.")

    def to_passage(self) -> Passage:
        metadata = {**self.metadata, **(self.model_extra or {})}
        return Passage(id=self.id, text=self.text, title=self.title, metadata=metadata, score=self.score)


class BudgetFields(BaseModel):
    """How much context to keep and how; everything optional (the service's settings fill the rest)."""

    # "budget or rate, not both", in the schema too: both given as numbers is invalid.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["budget", "rate"],
                "properties": {"budget": {"type": "integer"}, "rate": {"type": "number"}},
            }
        },
    )

    # Ranges are checked below (messages that name the value and the range) and shown in the schema here.
    budget: Integer | None = Field(
        default=None, description="Token budget of the context.", json_schema_extra={"minimum": 1}
    )
    rate: StrictFloat | None = Field(
        default=None,
        description="Keep this fraction of the tokens. With neither budget nor rate: the service's default rate.",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 1},
    )
    threshold: StrictFloat | None = Field(default=None, description="Keep only units scoring at least this.")
    top_k: PositiveInteger | None = Field(default=None, description="Keep at most this many units.")
    method: str | None = Field(default=None, description="Compression method (`none` = no compression).")
    stages: list[str] | None = Field(default=None, description="Pipeline stages, in order.")

    @model_validator(mode="after")
    def _one_limit(self) -> BudgetFields:
        if self.budget is not None and self.rate is not None:
            raise ValueError("give a token budget or a rate, not both")
        return self

    @field_validator("budget")
    @classmethod
    def _budget_range(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"budget {value} is not allowed: the token budget must be at least 1")
        return value

    @field_validator("rate")
    @classmethod
    def _rate_range(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"rate {value} is outside the allowed range (0, 1]")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        if value is not None and value not in SOFT_METHODS:
            with_method([], value)  # raises "unknown method ...; known: ..." (chains a+b allowed)
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str] | None) -> list[str] | None:
        unknown = [s for s in value or [] if s not in known_stage_names()]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(known_stage_names())}")
        return value

    def to_budget(self, default: Budget) -> Budget:
        if self.budget is None and self.rate is None:
            return Budget(tokens=default.tokens, rate=default.rate, threshold=self.threshold, top_k=self.top_k)
        return Budget(tokens=self.budget, rate=self.rate, threshold=self.threshold, top_k=self.top_k)


Question = Annotated[str, Field(min_length=1, max_length=10_000, pattern=r"\S")]


class ContextFields(BudgetFields):
    """What /v1/context and /v1/compress take beyond the budget."""

    include_text: StrictBool = Field(
        default=False,
        description="Also return each passage's whole text (`passages[].text`), dropped parts included: what "
        "an inspector needs to show the kept spans in place.",
    )


class ContextRequest(ContextFields):
    question: Question


class CompressRequest(ContextFields):
    question: Question
    # An empty list is not an error: the context is empty and its stats say why.
    passages: list[PassageIn]


# ---- the context response: CompressedContext.to_dict(), field for field ----------------------------------


class SpanOut(BaseModel):
    start: int
    end: int
    text: str


class PassageOut(BaseModel):
    id: str
    title: str
    retrieval_score: float | None
    label: str | None
    scores: dict[str, float]
    metadata: dict[str, Any]
    spans: list[SpanOut]
    text: str | None = Field(default=None, description="The passage's whole text; only with `include_text`.")


class StageStatsOut(BaseModel):
    name: str
    tokens_in: int
    tokens_out: int
    ms: float
    cache_hits: int
    details: dict[str, Any]


class ContextResponse(BaseModel):
    question: str
    context: str
    tokenizer: str
    order: list[str]
    tokens_in: int
    tokens_out: int
    passages: list[PassageOut]
    stats: list[StageStatsOut]


# ---- documents -----------------------------------------------------------------------------------------


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passages: list[PassageIn] = Field(min_length=1)


class DocumentsResponse(BaseModel):
    added: int
    skipped_duplicates: list[str]
    count: int = Field(description="Passages in the index now.")
    created: bool = Field(description="Whether this request created the index.")


# ---- rerank (Cohere's shape) ----------------------------------------------------------------------------


class RerankOptions(BudgetFields):
    """The extra field `ragctx` of a rerank request: also prune each returned document for the query."""

    compress: StrictBool = Field(
        default=False,
        description="Return, per result, the document's kept spans for the query (the compression pipeline run "
        "on that document alone) and, when the label stage runs, its label and distracting effect.",
    )


class RerankRequest(BaseModel):
    """Cohere's rerank (v1 and v2) and Jina's / vLLM's, which share this body."""

    # Other fields clients send (e.g. Jina's `model` options) are ignored, as the upstream APIs do.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str = Field(min_length=1)
    documents: list[str | dict[str, Any]] = Field(min_length=1)
    top_n: PositiveInteger | None = Field(default=None)
    return_documents: StrictBool = False
    rank_fields: list[str] | None = None
    max_tokens_per_doc: PositiveInteger | None = Field(
        default=None,
        description="Each document is cut to this many tokens (the target tokenizer's) before it is scored, as "
        "Cohere documents it.",
    )
    max_chunks_per_doc: PositiveInteger | None = Field(
        default=None, description="Accepted for Cohere v1 clients; unused."
    )
    ragctx: RerankOptions | None = None

    @field_validator("documents")
    @classmethod
    def _documents_have_text(cls, docs: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for i, doc in enumerate(docs):
            if isinstance(doc, dict) and not isinstance(doc.get("text"), str):
                raise ValueError(f'documents[{i}] is an object without a string "text"')
        return docs

    def document_text(self, doc: str | dict[str, Any]) -> str:
        if isinstance(doc, str):
            return doc
        if self.rank_fields:  # Cohere ranks structured documents on these fields, as `key: value` lines
            return "\n".join(f"{k}: {doc[k]}" for k in self.rank_fields if k in doc)
        return str(doc["text"])


class KeptSpan(BaseModel):
    start: int
    end: int
    text: str


class RagctxRerankResult(BaseModel):
    """What ragctx kept of one document (only with `ragctx.compress`)."""

    text: str = Field(description="The kept spans of the document, joined by spaces.")
    spans: list[KeptSpan] = Field(description="Character offsets into the document's text.")
    tokens_in: int
    tokens_out: int
    label: str | None = Field(default=None, description="relevant / distracting / irrelevant (label stage).")
    distracting_effect: float | None = Field(default=None, description="1 - P(abstain | query, document).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    id: str | None = Field(default=None, description="The caller's document id, when the document had one.")
    document: dict[str, Any] | None = None
    ragctx: RagctxRerankResult | None = None


class RerankUsage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class RerankResponse(BaseModel):
    """Cohere's shape (`id`, `results`, `meta`) with Jina's / vLLM's `model` and `usage`."""

    id: str
    model: str
    results: list[RerankResult]
    meta: dict[str, Any]
    usage: RerankUsage


class TeiRerankRequest(BaseModel):
    """Hugging Face text-embeddings-inference's `POST /rerank`."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    texts: list[str] = Field(min_length=1)
    raw_scores: StrictBool = Field(
        default=False, description="The cosine similarity itself; otherwise mapped to [0, 1] as (cos + 1) / 2."
    )
    return_text: StrictBool = False
    truncate: StrictBool = Field(
        default=False,
        description="Cut texts longer than the embedder's maximum; otherwise such a text is refused (413), as TEI "
        "does.",
    )
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


# ---- chat completions (OpenAI's shape; only what ragctx reads is declared) -----------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = self.content or []
        return "\n".join(p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str))


_HAS_TEXT = {"type": "string", "pattern": "\\S"}
# What `ChatRequest.question` needs, stated in the schema: some user message with text in it.
_USER_MESSAGE_WITH_TEXT: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"const": "user"},
        "content": {
            "anyOf": [
                _HAS_TEXT,
                {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": _HAS_TEXT},
                    },
                },
            ]
        },
    },
}


class ChatContextOptions(BudgetFields):
    """The extra body field `ragctx`: passages to use instead of retrieval, and how much to keep."""

    passages: list[PassageIn] | None = None


class ChatRequest(BaseModel):
    # Everything else (temperature, tools, ...) goes upstream untouched.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, json_schema_extra={"contains": _USER_MESSAGE_WITH_TEXT})
    stream: StrictBool = False
    max_tokens: PositiveInteger | None = Field(default=None)
    ragctx: ChatContextOptions = Field(default_factory=ChatContextOptions)

    @model_validator(mode="after")
    def _has_question(self) -> ChatRequest:
        self.question()
        return self

    def question(self) -> str:
        """The last user message: what the context is built for."""
        for message in reversed(self.messages):
            if message.role == "user" and message.text().strip():
                return message.text()
        raise ValueError("no user message with text to take the question from")


class ModelCard(BaseModel):
    """OpenAI's model object; an upstream's extra keys pass through."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""


class ModelList(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    details: list[dict[str, Any]] | None = Field(default=None, description="Per-field problems (422).")


class ErrorResponse(BaseModel):
    """Every error the service returns: `{"error": {"message", "type"}}` (OpenAI's shape)."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
