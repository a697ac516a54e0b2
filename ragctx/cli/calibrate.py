"""`ragctx calibrate ...`: per-model profiles measured once and reused by stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ragctx.cli.common import ConfigOpt, calibrate_app, console, fail, settings_or_exit


@calibrate_app.command("attnrank")
def calibrate_attnrank_cmd(
    k: Annotated[int, typer.Option("--k", help="Passages per prompt (one profile per k).")] = 10,
    model: Annotated[str | None, typer.Option("--model", help="Reader LM (default: RAGCTX_READER_MODEL).")] = None,
    prompts: Annotated[int, typer.Option("--prompts", help="Calibration prompts.")] = 20,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="nq20_dev.jsonl.gz (default: ../shared/data, else the sample)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Measure the model's positional attention profile over k slots and store it for `attnrank`."""
    from ragctx.evaluation.data import find_nq20, load_nq20
    from ragctx.models import ModelRegistry
    from ragctx.reordering.calibration import attnrank_path, calibrate_attnrank, sample_prompts

    s = settings_or_exit(config, reader_model=model)
    if k < 2 or prompts < 1:
        fail("--k must be at least 2 and --prompts at least 1", 2)
    path = data or find_nq20()
    if path is not None and path.is_file():
        rows = load_nq20(path, prompts)
        calib = [(q.question, q.passages[:k]) for q in rows if len(q.passages) >= k]
        if len(calib) < len(rows):
            fail(f"the dev questions have fewer than {k} passages", 2)
    else:
        calib = sample_prompts(k, prompts)
    lm = ModelRegistry(s).reader()
    profile = calibrate_attnrank(lm, s.resolved_cache_dir(), k, calib)
    console.print(
        f"layer {profile.layer} (edge ratio {profile.edge_ratio:.2f}); slots from most to least attended: "
        f"{[x + 1 for x in profile.position_order]}; saved to {attnrank_path(s.resolved_cache_dir(), lm, k)}"
    )


@calibrate_app.command("attention-bias")
def calibrate_attention_bias_cmd(
    k: Annotated[int, typer.Option("--k", help="Passages per prompt (one bias profile per k).")] = 10,
    prompts: Annotated[int, typer.Option("--prompts", help="Calibration prompts (k prefills each).")] = 5,
    config: ConfigOpt = None,
) -> None:
    """Measure the attention a content-free passage gets at each slot (for `[attention_sort] debias`)."""
    from ragctx.method import section
    from ragctx.models import ModelRegistry
    from ragctx.reordering import attention_sort
    from ragctx.reordering.calibration import attention_bias_path, calibrate_attention_bias, sample_prompts

    s = settings_or_exit(config)
    if k < 2 or prompts < 1:
        fail("--k must be at least 2 and --prompts at least 1", 2)
    lm = ModelRegistry(s).reader()
    cfg = section(s, attention_sort.METHOD)  # the bias is per layer set and aggregate, as the stage reads it
    layers = tuple(cfg.layers) if cfg.layers else None
    bias = calibrate_attention_bias(lm, s.resolved_cache_dir(), k, sample_prompts(k, prompts), layers, cfg.aggregate)
    where = attention_bias_path(s.resolved_cache_dir(), lm, k, layers, cfg.aggregate)
    console.print(f"bias per slot: {[round(x, 4) for x in bias.bias]}; saved to {where}")


@calibrate_app.command("heads")
def calibrate_heads_cmd(
    model: Annotated[str | None, typer.Option("--model", help="Scorer LM (default: RAGCTX_SCORER_MODEL).")] = None,
    needles: Annotated[int, typer.Option("--needles", help="Needle-in-essay examples.")] = 12,
    nq: Annotated[int, typer.Option("--nq", help="NQ-20 examples with a known answer span.")] = 24,
    max_layer: Annotated[
        int | None, typer.Option("--max-layer", help="Deepest layer searched (default: 4/5 of the layers).")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Heads kept.")] = 8,
    data: Annotated[
        Path | None, typer.Option("--data", help="The shared data folder (default ../shared/data).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Find the evaluator heads of a model (for `ehpc`) on needles in essays and NQ answer spans."""
    import gzip

    from ragctx.compressors.evaluator_heads import calibrate_heads, heads_path, needle_examples, nq_examples
    from ragctx.evaluation.data import find_nq20
    from ragctx.models import ModelRegistry

    s = settings_or_exit(config, scorer_model=model)
    nq_file = (data / "nq20" / "nq20_dev.jsonl.gz") if data else find_nq20()
    if nq_file is None or not nq_file.is_file():
        fail("shared data not found; pass --data PATH/TO/shared/data")
        return
    root = nq_file.parent.parent
    examples = needle_examples(root / "needle_haystack" / "PaulGrahamEssays", needles)
    with gzip.open(nq_file, "rt", encoding="utf-8") as fh:
        # Questions 1000+ of the dev file: far from the first hundred that the bench evaluates.
        rows = [json.loads(line) for i, line in enumerate(fh) if 1000 <= i < 1000 + nq]
    examples += nq_examples(rows)
    lm = ModelRegistry(s).scorer()
    # SmolLM2-135M's answer-finding heads sit at layers 21-23 of 30 (a third of the way down they put 4x less
    # attention on answers), so the default search stops at 4/5 of the depth: early exit still skips the rest.
    deepest = max_layer if max_layer is not None else lm.model.config.num_hidden_layers * 4 // 5
    try:
        heads = calibrate_heads(lm, s.resolved_cache_dir(), examples, deepest, top)
    except ValueError as exc:
        fail(str(exc), 2)
        return
    listed = ", ".join(f"L{layer}H{head} {v:.3f}" for (layer, head), v in zip(heads.heads, heads.scores, strict=True))
    console.print(f"evaluator heads of {lm.name} from {heads.examples} examples: {listed}")
    console.print(f"early exit after layer {heads.deepest_layer}; saved to {heads_path(s.resolved_cache_dir(), lm)}")


@calibrate_app.command("abstention")
def calibrate_abstention_cmd(
    model: Annotated[str | None, typer.Option("--model", help="Scorer LM (default: RAGCTX_SCORER_MODEL).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Check that the scorer abstains on unrelated passages (else distracting effect is not used)."""
    from ragctx.models import ModelRegistry
    from ragctx.scoring.abstention import check_abstention

    s = settings_or_exit(config, scorer_model=model)
    check = check_abstention(ModelRegistry(s).scorer(), s.resolved_cache_dir())
    verdict = "follows" if check.follows_abstention else "does NOT follow"
    console.print(
        f"{check.model} {verdict} the abstention instruction: mean DE {check.mean_de_unrelated:.2f} "
        f"on {check.pairs} unrelated passages"
    )
