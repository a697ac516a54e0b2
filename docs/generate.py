"""Rewrites the generated blocks of README.md and docs/configuration.md from the declarations.

    python docs/generate.py          # rewrite in place
    python docs/generate.py --check  # exit 1 if any block is stale (tests/test_docs_generated.py)

A block sits between `<!-- generated: NAME -->` and `<!-- end generated -->`; NAME is `stages`
(`ragctx stages --markdown`) or `settings` (`ragctx config --markdown`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ragctx.registry import stages_markdown
from ragctx.settings import settings_markdown

ROOT = Path(__file__).resolve().parents[1]
FILES = {"README.md": "stages", "docs/configuration.md": "settings"}
_BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n).*?(<!-- end generated -->)", re.S)


def regenerate(text: str) -> str:
    tables = {"stages": stages_markdown, "settings": settings_markdown}
    return _BLOCK.sub(lambda m: m.group(1) + tables[m.group(2)]() + "\n" + m.group(3), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    args = ap.parse_args()
    stale = []
    for name, block in FILES.items():
        path = ROOT / name
        text = path.read_text()
        if f"<!-- generated: {block} -->" not in text:
            raise SystemExit(f"{path}: no `<!-- generated: {block} -->` block")
        new = regenerate(text)
        if new != text:
            stale.append(name)
            if not args.check:
                tmp = path.with_suffix(path.suffix + ".tmp")
                tmp.write_text(new)
                tmp.replace(path)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
