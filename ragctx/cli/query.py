"""`ragctx query` and `ragctx compress`: one question against the index, or a batch of caller-given passages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ragctx.cli.common import (
    BudgetOpt,
    ConfigOpt,
    IndexDirOpt,
    MethodOpt,
    RateOpt,
    app,
    budget_or_exit,
    check_method_or_exit,
    console,
    err,
    fail,
    print_context,
    settings_or_exit,
)
from ragctx.registry import SOFT_METHODS, soft_method_error, text_method
from ragctx.state import Budget

if TYPE_CHECKING:
    from ragctx.batch import CompressRequest

HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Also write a self-contained HTML report (one file, opens offline): each passage in its final order "
        "with the kept spans highlighted, scores, labels and per-stage tokens and ms.",
        dir_okay=False,
    ),
]


@app.command()
def query(
    question: Annotated[str, typer.Argument(help="The question.")],
    budget: BudgetOpt = None,
    rate: RateOpt = None,
    method: MethodOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Passages to retrieve.")] = None,
    stages: Annotated[str | None, typer.Option("--stages", help="Comma-separated stage list.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the CompressedContext as JSON.")] = False,
    answer: Annotated[
        bool, typer.Option("--answer", help="Also answer with the local reader (needed for --method compllm).")
    ] = False,
    html: HtmlOpt = None,
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Retrieve passages for a question and print the budgeted context with its provenance."""
    from ragctx.engine import ContextEngine

    stage_list = [x.strip() for x in stages.split(",") if x.strip()] if stages else None
    s = settings_or_exit(config, index_dir=index_dir, top_k=top_k, stages=stage_list)
    b = budget_or_exit(s, budget, rate)
    # Bad arguments fail (exit 2) before anything is loaded or read, index included.
    check_method_or_exit(method)
    if method in SOFT_METHODS and not answer:
        fail(soft_method_error(method), 2)
    engine = ContextEngine(s)
    if engine.retriever is None:
        where = s.resolved_index_dir()
        fail(f"no index at {where}; build one with `ragctx index build PATH` or run `ragctx demo`")
    try:
        ctx = engine.run(question, method=text_method(method), budget=b)
        reply = engine.answer_locally(question, ctx, method) if answer else None
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)
        return
    if html is not None:
        from ragctx.inspector import ReportSection, write_report

        write_report(html, [ReportSection.of(ctx, method, b)], title=f"ragctx: {question}")
        err.print(f"wrote the report to {html}")
    if as_json:
        out = ctx.to_dict() | ({"answer": reply.text} if reply else {})
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
        return
    print_context(ctx)
    if reply is not None:
        console.print(f"[bold]answer[/] ({reply.prompt_tokens} prompt positions): {reply.text}", highlight=False)


@app.command()
def compress(
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL: {question, passages:[{id,title,text}]}.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL of CompressedContext, one per line.")],
    method: MethodOpt = None,
    budget: BudgetOpt = None,
    rate: RateOpt = None,
    html: HtmlOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed or interrupted run of the same job from its last line.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Compress caller-given passages in batch (no retrieval); models load once. Without --method, the
    default chain (the dev bench's best); without --budget or --rate, the default rate (`ragctx config`).
    The output appears only when complete; an interrupted run continues with --resume."""
    import hashlib

    from tqdm import tqdm

    from ragctx.batch import InputError, ResumableOutput, read_requests
    from ragctx.engine import ContextEngine

    s = settings_or_exit(config)
    b = budget_or_exit(s, budget, rate)
    check_method_or_exit(method)
    if not input.is_file():
        fail(f"input file {input} does not exist")
    try:
        # Validate everything before any work or output.
        requests = list(read_requests(input, s.max_passage_chars))
    except InputError as exc:
        fail(str(exc))
        return
    engine = ContextEngine(s)
    check_method_or_exit(method)
    job = hashlib.sha256(input.read_bytes())
    job.update(json.dumps([method, b.tokens, b.rate, s.model_dump_json()]).encode())
    try:
        out = ResumableOutput(output, job.hexdigest()[:32], resume)
    except InputError as exc:
        fail(str(exc), 2)
        return
    tokens_in = tokens_out = 0
    try:
        todo = requests[out.done :]
        for req in tqdm(todo, desc="compress", unit="q", disable=len(todo) < 2, initial=out.done, total=len(requests)):
            ctx = engine.run(req.question, req.passages, method, b)
            tokens_in += ctx.tokens_in
            tokens_out += ctx.tokens_out
            out.write(ctx.to_dict())
        out.finish()
    except (ValueError, FileNotFoundError) as exc:  # the output was never renamed into place
        out.close()
        fail(str(exc), 2)
        return
    except BaseException:
        out.close()
        raise
    ratio = tokens_out / tokens_in if tokens_in else 1.0
    err.print(f"wrote {len(requests)} contexts to {output}: {tokens_in} -> {tokens_out} tokens ({ratio:.2f})")
    if html is not None:
        write_batch_report(html, output, requests, method, b)
        err.print(f"wrote the report to {html}")


def write_batch_report(
    html: Path, output: Path, requests: list[CompressRequest], method: str | None, b: Budget
) -> None:
    """The report of a finished batch, from its output file (so a resumed run's earlier lines are in it too)
    and the passage texts of its input."""
    from ragctx.inspector import ReportSection, write_report

    with open(output, encoding="utf-8") as fh:
        results = [json.loads(line) for line in fh if line.strip()]
    sections = [
        ReportSection.from_output(result, {p.id: p.text for p in req.passages}, method, b, req.answers)
        for result, req in zip(results, requests, strict=True)
    ]
    write_report(html, sections, title=f"ragctx: {len(sections)} questions from {output.name}")
