"""Advice that can be followed: every ``--flag`` an error or warning message suggests exists on the config of
the command that can print it (the issue that prompted this: "pass --test_split NAME" when no stage had it)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path

from hf_scdd import cli, configs
from test_layout import PACKAGE, graph, module_names

FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")
NAMED_STAGE = re.compile(r"hf-scdd ([a-z-]+)|\b([a-z-]+)'s --")
PARSER_FLAGS = {"help", "config"}  # added by parse_config / argparse to every command
LAUNCHER_FLAGS = {"multi_gpu", "num_processes"}  # accelerate launch's own, in messages about launching
STAGE_MODULES = {name: module for name, (module, _, _) in cli.STAGES.items()}


def config_fields(stage: str) -> set[str]:
    module, config_name, _ = cli.STAGES[stage]
    return {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), config_name))}


def message_text(node: ast.AST) -> str:
    """The literal text of a message expression (f-string parts included, the interpolations dropped)."""
    return "".join(sub.value for sub in ast.walk(node) if isinstance(sub, ast.Constant) and isinstance(sub.value, str))


def messages(path: Path):
    """``(enclosing class or None, text)`` of every raised error, log call, validation check and in_range."""
    tree = ast.parse(path.read_text())
    for owner in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        cls = owner.name if isinstance(owner, ast.ClassDef) else None
        body = owner.body if cls else [n for n in tree.body if not isinstance(n, ast.ClassDef)]
        for node in (sub for top in body for sub in ast.walk(top)):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                yield cls, " ".join(message_text(a) for a in node.exc.args)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "warning", "info", "error"):
                yield cls, message_text(node.args[0]) if node.args else ""
            elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[1], (ast.Constant, ast.JoinedStr)):
                yield cls, message_text(node.elts[1])
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "in_range" and node.args:
                yield cls, f"--{node.args[0].value}"


def importing_stages(module: str, deps: dict[str, set[str]]) -> set[str]:
    """The stages whose module imports ``module`` (lazily or not, directly or through others)."""
    def reaches(start: str, seen: set[str]) -> bool:
        if start == module:
            return True
        seen.add(start)
        return any(reaches(d, seen) for d in deps[start] if d not in seen)

    return {stage for stage, name in STAGE_MODULES.items() if stage != "pipeline" and reaches(name, set())}


def test_every_suggested_flag_exists_on_the_relevant_config():
    deps, names = graph(), module_names()
    config_classes = {c: {f.name for f in dataclasses.fields(getattr(configs, c))}
                      for c in ("StageConfig", "DistilledSetFields", "PostTrainViewFields")}
    for stage, (module, config_name, _) in cli.STAGES.items():
        config_classes[config_name] = config_fields(stage)
    problems, checked = [], 0
    for module, path in sorted(names.items()):
        owner_stage = next((s for s, m in STAGE_MODULES.items() if m == module), None)
        for cls, text in messages(path):
            for flag, stage in suggested_flags(text):
                if cls in config_classes:
                    allowed = [config_classes[cls]]  # a config's own check names its own fields
                elif stage:
                    allowed = [config_fields(stage)]  # "hf-scdd probe --backbone", "evaluate's --soft_labels"
                elif owner_stage:
                    allowed = [config_fields(owner_stage)]
                else:
                    allowed = [config_fields(s) for s in importing_stages(module, deps)]
                checked += 1
                if not allowed or not all(flag in fields for fields in allowed):
                    problems.append(f"{path.relative_to(PACKAGE)}: --{flag} in {text[:90]!r}")
    assert checked > 50, checked  # the scan found the messages
    assert not problems, "messages suggest flags that the command does not have:\n" + "\n".join(problems)


def suggested_flags(text: str) -> list[tuple[str, str | None]]:
    """``(flag, stage the text names last before it, or None)`` for every ``--flag`` in a message."""
    named = [(m.start(), m.group(1) or m.group(2)) for m in NAMED_STAGE.finditer(text)
             if (m.group(1) or m.group(2)) in cli.STAGES]
    found = []
    for match in FLAG.finditer(text):
        flag = match.group(1)
        if flag in PARSER_FLAGS or ("accelerate launch" in text and flag in LAUNCHER_FLAGS):
            continue
        before = [stage for start, stage in named if start < match.start()]
        found.append((flag, before[-1] if before else None))
    return found
