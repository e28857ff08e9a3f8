"""The layout: every module imports only modules below it, and the plain-Python ones import
neither torch nor Ray, so that bad input is checked before anything heavy starts.

``ORDER`` is the layout of docs/architecture.md's module table, bottom first: a module may import (at module
level or inside a function) only modules listed before it. A new module must be placed here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cot_ray"

ORDER = [
    # foundation: files, settings, processes
    "files", "memory", "metric_names", "seeds", "errors", "model_config", "config", "run_policy", "config_loading",
    "checkpoint", "machine",
    # models and their losses
    "stopping", "models.sampler", "models.interface", "models.lstm", "models.transformer", "models", "models.losses",
    "models.fused", "models.oracle",
    # the config reference (docs/config.md): may list the architectures' own configs
    "config_docs",
    # data and evaluation
    "text", "corpus", "data", "bleu", "metrics",
    # training, in one process
    "learners", "rundir", "group", "schedule", "loop", "lm_score",
    # Ray: placement, actors
    "placement", "faults", "connection", "runtime",
    # sweeps
    "sweep", "sweep.spec", "sweep.results", "sweep.trial", "sweep.tune",
    # commands
    "compare", "cli",
]
PLAIN = ["files", "metric_names", "seeds", "errors", "model_config", "config", "run_policy", "config_loading", "stopping",
         "sweep.spec"]  # neither torch nor Ray
RAY_FREE = ORDER[:ORDER.index("placement")]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """The cot_ray modules a file imports, anywhere in it (relative imports resolved)."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("cot_ray"):
                mod = node.module[len("cot_ray."):] if node.module != "cot_ray" else ""
            else:
                continue
            for alias in node.names:  # `from . import loop` imports a module
                sub = f"{mod}.{alias.name}" if mod else alias.name
                out.add(sub if sub in ORDER else mod)
        elif isinstance(node, ast.Import):
            out |= {a.name[len("cot_ray."):] for a in node.names if a.name.startswith("cot_ray.")}
    return {m for m in out if m and m != name}


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_its_place():
    names = {module_name(p) for p in MODULES} - {""}
    assert names == set(ORDER), f"place these in ORDER: {sorted(names - set(ORDER))}; gone: {sorted(set(ORDER) - names)}"


@pytest.mark.parametrize("path", [p for p in MODULES if module_name(p)], ids=module_name)
def test_imports_point_down(path):
    name = module_name(path)
    above = [m for m in project_imports(path) if ORDER.index(m) > ORDER.index(name)]
    assert not above, f"{name} imports {above}, which are above it in the layout"


def _imports_after(module: str) -> set:
    code = (f"import sys, cot_ray.{module}; "
            "print(' '.join(sorted(m for m in ('torch', 'ray') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_plain_modules_import_neither_torch_nor_ray():
    for module in PLAIN:
        assert not _imports_after(module), module


def test_modules_below_the_runtime_do_not_import_ray():
    code = ("import sys; " + "; ".join(f"import cot_ray.{m}" for m in RAY_FREE)
            + "; sys.exit(1 if 'ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_docs_architecture_table_names_every_module_and_only_modules():
    """docs/architecture.md's module table is the layout a reader sees: it names every module
    (a package as `name/`, a module as `name.py`) and no file that does not exist."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    files = {p.name for p in MODULES}
    for path in MODULES:
        name = module_name(path)
        if not name:
            continue
        shown = f"`{name.split('.')[-1]}/`" if path.name == "__init__.py" else f"`{path.name}`"
        assert shown in table, f"docs/architecture.md's module table does not name {name} ({shown}): add it"
    named = set(re.findall(r"`(\w+\.py)`", table))
    assert named <= files, f"docs/architecture.md's module table names files that do not exist: {sorted(named - files)}"
