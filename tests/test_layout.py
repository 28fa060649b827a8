"""The package layout by role: stages depend on shared modules only, no import cycles, a torch-free CLI start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hf_scdd"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every hf_scdd module ``name`` imports, at module level or inside functions (lazy imports count)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m not in (name, "hf_scdd")}


def graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_stages_import_no_other_stage_and_shared_modules_no_stage():
    deps = graph()
    stages = {m for m in deps if m.startswith("hf_scdd.stages.")}
    assert {s.rsplit(".", 1)[1] for s in stages} == {"squeeze", "probe", "recover", "relabel", "evaluate", "inspect_bn"}
    for stage in stages:
        assert not (deps[stage] & stages), f"{stage} imports {deps[stage] & stages}"
    for module, imported in deps.items():
        if module.startswith(("hf_scdd.stages", "hf_scdd.pipeline")):
            continue
        upward = {m for m in imported if m.startswith(("hf_scdd.stages", "hf_scdd.pipeline"))}
        assert not upward, f"shared module {module} imports {upward}"


def test_no_import_cycles():
    deps, state, path = graph(), {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for dep in deps[module]:
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = "done"

    for module in deps:
        if module not in state:
            visit(module)


def test_stage_modules_are_thin():
    for path in (PACKAGE / "stages").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 210, f"{path.name} grew past a config and its main"


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import sys, hf_scdd, hf_scdd.cli\n"
        "hf_scdd.cli.main(['--help'])\n"
        "try:\n    hf_scdd.cli.main(['no-such-stage'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'datasets', 'transformers', 'accelerate') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: hf-scdd <stage>" in result.stdout
