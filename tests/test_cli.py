"""The ``hf-scdd`` command: stage listing, ``python -m hf_scdd``, unknown stages, per-stage ``--help``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from hf_scdd import cli


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def assert_lists_stages(text: str) -> None:
    assert text.startswith("usage: hf-scdd <stage>")
    for stage, (_, _, description) in cli.STAGES.items():
        assert f"  {stage}" in text and description in text


def test_stages_cover_the_pipeline():
    assert {"squeeze", "probe", "inspect-bn", "recover", "relabel", "evaluate", "pipeline"} <= set(cli.STAGES)


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_help_in_process(argv, capsys):
    cli.main(argv)
    assert_lists_stages(capsys.readouterr().out)


def test_python_dash_m_in_subprocess():
    result = run([sys.executable, "-m", "hf_scdd", "--help"])
    assert result.returncode == 0, result.stderr
    assert_lists_stages(result.stdout)


@pytest.mark.skipif(shutil.which("hf-scdd") is None, reason="console script not installed (pip install -e .)")
def test_console_script_in_subprocess():
    result = run(["hf-scdd", "--help"])
    assert result.returncode == 0, result.stderr
    assert_lists_stages(result.stdout)


def test_unknown_stage_exits_with_message():
    with pytest.raises(SystemExit) as err:
        cli.main(["distil", "--seed", "1"])
    assert isinstance(err.value.code, str)  # sys.exit(message): printed to stderr, exit status 1
    assert "unknown stage 'distil'" in err.value.code and "stages:" in err.value.code


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_stage_help_lists_fields(stage, capsys):
    module_name, config_name, _ = cli.STAGES[stage]
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} not written yet")
    with pytest.raises(SystemExit) as err:
        cli.main([stage, "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert f"hf-scdd {stage}" in out
    for flag in ("--output_dir", "--seed", "--config"):
        assert flag in out
