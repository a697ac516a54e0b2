"""The package's shape: layers import one direction only, and nothing imports in a cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: it is part of the dev extra (`pip install -e '.[dev]'`)")
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("ragctx", exclude_type_checking_imports=True)
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in graph.find_modules_directly_imported_by(a)
        if a != b and graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == [], f"import cycles through: {cycles[:5]}"


def test_every_module_of_the_package_sits_in_a_layer():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = {m.strip() for c in config if c["type"] == "layers" for layer in c["layers"] for m in layer.split(":")}
    top = {f"ragctx.{p.stem}" for p in (ROOT / "ragctx").glob("*.py") if p.stem not in ("__init__", "__main__")}
    top |= {f"ragctx.{p.parent.name}" for p in (ROOT / "ragctx").glob("*/__init__.py")}
    assert sorted(top - layered) == [], "add these to a layer of [tool.importlinter] in pyproject.toml"


def test_reading_the_registry_and_the_settings_loads_no_model_library():
    """Every command reads every method's declaration; torch loads only when a method is built."""
    code = (
        "import sys, ragctx.settings, ragctx.cli; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
