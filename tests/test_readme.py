"""Every command block of the README runs, at tiny sizes, so the README cannot drift from the code.

The ```bash blocks are read from README.md and run in order in one scratch folder (where ``examples/``,
``configs/`` and ``src/`` are links into this checkout), each as written plus the tiny-size flags of
:data:`TINY` that the command does not set itself (a README value such as ``--ipc 50`` is kept; an
unspoken default such as 100 evaluation epochs is shrunk), and ``--dataset`` pointing at a small image folder
instead of the built-in Fashion-MNIST. How each command runs:

* ``hf-scdd <stage> ...``: :func:`hf_scdd.cli.main`, in this process;
* ``accelerate launch [flags] examples/distill.py ...`` that starts one process: the script itself (``runpy``),
  in this process, as the launcher would run it;
* a launch of several processes: for real, under ``accelerate launch`` (with a free port), when this machine
  has what it asks for (the CPU recipe always; a GPU config only with that many GPUs), otherwise its config file
  must exist and the script's arguments must parse;
* ``bash scripts/install.sh`` and ``python -m pytest``: not run (the environment and this very suite).
"""

from __future__ import annotations

import os
import random
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, stage_env, write_image_dataset
from hf_scdd import cli

NOT_RUN = ("bash scripts/install.sh", "python -m pytest")
TINY: dict[str, dict[str, str | list[str]]] = {
    "squeeze": {"width": "4", "epochs": "1", "batch_size": "16", "moco_k": "32", "moco_dim": "8", "bn_splits": "2",
                "max_train_samples": "64"},
    "probe": {"epochs": "1", "batch_size": "16"},
    "inspect-bn": {},
    "recover": {"iterations": "3"},
    "relabel": {},
    "evaluate": {"arch": "resnet10", "width": "4", "steps": "2", "eval_points": "1"},
    "pipeline": {
        "label_column": "label", "arch": "resnet10", "width": "4", "ipc": "1", "iterations": "3", "eval_steps": "2",
        "eval_points": "1", "seeds": ["0"],
        "squeeze": "{epochs: 1, batch_size: 16, moco_k: 32, moco_dim: 8, bn_splits: 2, max_train_samples: 64}",
        "teacher_squeeze": "{epochs: 1, batch_size: 16, max_train_samples: 64}", "probe": "{epochs: 1, batch_size: 16}",
        "recover": "{preset: small, iterations: 3}", "evaluate": "{batch_size: 16}", "relabel": "{batch_size: 16}",
    },
}
COMMON = {"report_to": "none"}


def readme_commands() -> list[str]:
    """The README's shell commands in order: one per line of each ```bash block, ``&&`` chains split."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for line in (line for block in blocks for line in block.splitlines()):
        command = " ".join(shlex.split(line, comments=True))
        commands += [part.strip() for part in command.split("&&") if part.strip()]
    return commands


def with_tiny_sizes(args: list[str], stage: str, dataset: str) -> list[str]:
    """``args`` plus every tiny-size flag (and the test dataset) that ``args`` does not set itself."""
    given = {a[2:].split("=")[0] for a in args if a.startswith("--")}
    extra = {"dataset": dataset, **COMMON, **TINY[stage]} if stage != "inspect-bn" else {**COMMON}
    if stage == "relabel":
        extra.pop("dataset")
    return args + [item for k, v in extra.items() if k not in given
                   for item in (f"--{k}", *(v if isinstance(v, list) else [v]))]


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def launch_plan(launcher: list[str]) -> tuple[int, bool]:
    """(processes, needs GPUs) of ``accelerate launch`` flags, reading a ``--config_file`` if given."""
    processes, gpus = 1, False
    if "--config_file" in launcher:
        config = yaml.safe_load((REPO / launcher[launcher.index("--config_file") + 1]).read_text())
        processes, gpus = int(config.get("num_processes", 1)), not config.get("use_cpu", False)
        gpus = gpus and config.get("distributed_type") != "NO"
    if "--num_processes" in launcher:
        processes = int(launcher[launcher.index("--num_processes") + 1])
    return processes, gpus


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    for name in ("examples", "configs", "src"):
        (tmp_path / name).symlink_to(REPO / name)
    write_image_dataset(tmp_path / "tiny", n_train_per_class=52, n_test_per_class=4, num_classes=3, size=12)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_launch(words: list[str], env: dict[str, str], scratch: Path, monkeypatch) -> None:
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    launcher, args = words[2:script], with_tiny_sizes(words[script + 1:], "pipeline", "tiny")
    processes, gpus = launch_plan(launcher)
    if processes == 1:
        monkeypatch.setattr(sys, "argv", [words[script], *args])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        runpy.run_path(words[script], run_name="__main__")
        return
    import torch

    if gpus and torch.cuda.device_count() < processes:
        from hf_scdd.configs import parse_config
        from hf_scdd.pipeline import PipelineConfig

        parse_config(PipelineConfig, args).validate()  # what can be checked without the GPUs
        return
    port = ["--main_process_port", str(29600 + random.randint(4000, 5000))]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, *port, words[script], *args]
    result = subprocess.run(command, env=stage_env(**env), capture_output=True, text=True, timeout=400, cwd=scratch)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_every_readme_command_runs(scratch, monkeypatch):
    ran = []
    for command in readme_commands():
        if command.startswith(NOT_RUN):
            continue
        env, words = split_env(command.split(" "))
        if words[0] == "hf-scdd":
            cli.main([words[1], *with_tiny_sizes(words[2:], words[1], "tiny")])
        elif words[:2] == ["accelerate", "launch"]:
            run_launch(words, env, scratch, monkeypatch)
        else:
            raise AssertionError(f"the README runs {command!r}, which this test does not know how to run")
        ran.append(command)
    assert len(ran) >= 12, ran
    # what the README promises of these commands
    assert (scratch / "outputs" / "distill" / "results.md").exists()
    assert (scratch / "outputs" / "fmnist-ipc50" / "distilled" / "README.md").exists()
    assert (scratch / "runs" / "eval" / "student" / "model.safetensors").exists()
    assert len(list((scratch / "runs" / "distilled" / "soft_labels").glob("epoch_*.safetensors"))) == 100
    assert os.path.isdir(scratch / "outputs" / "cifar100-scdd-ipc50" / "distilled")
