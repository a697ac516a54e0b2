"""Long-running corpus jobs: `ragctx prune` (query-agnostic quality scoring and static pruning).

Kept light on import: `ragctx.cli` imports `ragctx.jobs.cli` to register the command.
"""
