"""Long-running corpus jobs: `ragctx prune` (query-agnostic quality scoring and static pruning).

Kept light on import.
"""
