"""What the fidelity and sweep benchmarks share: the datasets and their squeeze budgets, stage commands run as
single-threaded subprocesses two at a time, and the hardware line every figure is recorded with.

Every step is an ``hf-scdd`` stage writing its own folder, so an interrupted benchmark resumes where it stopped
(finished stages and student runs are skipped) and every number comes from the library's own code path. Two
single-threaded processes use a 2-core CPU better than one process with two threads, whose spinning OpenMP
threads collapse as soon as anything else runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CIFAR10 = HERE.parent.parent / "shared" / "data" / "cifar10"


@dataclass
class Budget:
    """Architecture and training budget of one squeeze model."""

    arch: str = "resnet10"
    width: int = 16
    epochs: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"arch": self.arch, "width": self.width, "epochs": self.epochs, "max_train_samples": 0, **self.extra}


@dataclass
class DatasetSetup:
    """A benchmark dataset: where it is, the models squeeze trains for it, and the student architecture."""

    name: str
    dataset: str
    teacher: Budget
    ssl: Budget
    supervised: Budget  # the SRe²L control: the SSL model's architecture and budget, trained with labels
    student: dict[str, Any]

    def available(self) -> bool:
        return self.dataset == "fashion_mnist" or Path(self.dataset).is_dir()


DATASETS = {
    # Teachers: 92.0 % (Fashion-MNIST) and ≥ 85 % (CIFAR-10) test top-1 (ResNet-10 width 32 reached 84.2 % in 15
    # epochs, hence 25); MoCo v2 and its supervised control: the same architecture and budget.
    "fashion_mnist": DatasetSetup(
        "fashion_mnist", "fashion_mnist", teacher=Budget(epochs=10), ssl=Budget(epochs=10),
        supervised=Budget(epochs=10), student={"arch": "resnet10", "width": 16},
    ),
    "cifar10": DatasetSetup(
        "cifar10", str(CIFAR10), teacher=Budget(width=32, epochs=25), ssl=Budget(epochs=15),
        supervised=Budget(epochs=15), student={"arch": "resnet10", "width": 16},
    ),
}


def hardware_line() -> str:
    """``CPU model (kind: flags), N cores[, GPU], torch X``: printed with, and stored next to, every figure."""
    from hf_scdd.utils import hardware_summary

    hw = hardware_summary()
    line = f"{hw['cpu_model']} ({hw['cpu_kind']}; flags {', '.join(hw['cpu_flags']) or 'none'}), {hw['cores']} cores"
    if hw["onednn_isa_cap"]:
        line += f", oneDNN capped at {hw['onednn_isa_cap']}"
    return line + (f", GPU {hw['gpu']}" if hw["gpu"] else "") + f", torch {hw['torch']}"


def stage_command(stage: str, **fields: Any) -> list[str]:
    """``python -m hf_scdd <stage> --field value ...`` (lists become several values, None is left out)."""
    cmd = [sys.executable, "-m", "hf_scdd", stage]
    for key, value in fields.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        cmd += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)]
    return cmd


def run_all(commands: list[tuple[str, list[str]]], logs: Path, workers: int = 2) -> None:
    """Run ``(name, command)`` pairs, ``workers`` at a time, one intra-op thread each; stop at the first
    failure with its log's tail. Each command's output goes to ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}

    def run(item: tuple[str, list[str]]) -> tuple[str, float]:
        name, cmd = item
        start = time.time()
        log = logs / f"{name}.log"
        with open(log, "w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if code:
            raise RuntimeError(f"{name} failed (exit {code}); the end of {log}:\n" + log.read_text()[-3000:])
        return name, time.time() - start

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, seconds in pool.map(run, commands):
            print(f"  {name}: {seconds:.0f} s", flush=True)


def squeeze_commands(setup: DatasetSetup, root: Path) -> list[tuple[str, list[str]]]:
    """The supervised teacher, the MoCo v2 backbone, and the supervised control of the same architecture."""
    common = {"dataset": setup.dataset, "report_to": "none"}
    commands = [
        ("teacher", stage_command("squeeze", method="supervised", output_dir=root / "teacher",
                                  **setup.teacher.fields(), **common)),
        ("mocov2", stage_command("squeeze", method="mocov2", output_dir=root / "mocov2", **setup.ssl.fields(),
                                 **common)),
    ]
    if setup.supervised != setup.teacher:
        commands.append(("supervised", stage_command("squeeze", method="supervised", output_dir=root / "supervised",
                                                     **setup.supervised.fields(), **common)))
    return commands


def supervised_dir(setup: DatasetSetup, root: Path) -> Path:
    """The SRe²L control's squeeze folder (the teacher itself when their budgets are the same)."""
    return root / ("teacher" if setup.supervised == setup.teacher else "supervised")


def probe_commands(setup: DatasetSetup, root: Path) -> list[tuple[str, list[str]]]:
    """A calibrated linear probe on each frozen backbone: SC-DD and SRe²L then invert the same kind of head."""
    common = {"dataset": setup.dataset, "report_to": "none", "max_train_samples": 0}
    return [
        ("probe_mocov2", stage_command("probe", backbone=root / "mocov2", output_dir=root / "probe_mocov2", **common)),
        ("probe_supervised", stage_command("probe", backbone=supervised_dir(setup, root),
                                           output_dir=root / "probe_supervised", **common)),
    ]


def evaluate_command(setup: DatasetSetup, distilled: Path, out: Path, teacher: Path, *, modes: list[str],
                     seeds: list[int], steps: int, random_baseline: bool, save_student: bool = False,
                     **extra: Any) -> list[str]:
    """One evaluate run (students under the library's protocol); the first seed's student kept if asked."""
    return stage_command(
        "evaluate", distilled=distilled, dataset=setup.dataset, teacher=teacher, label_modes=modes, seeds=seeds,
        steps=steps, random_baseline=str(random_baseline).lower(), output_dir=out,
        save_student=str(save_student).lower(), report_to="none", **setup.student, **extra,
    )


STUDENT_MODES = ["hard", "online"]
"""The label modes the benchmarks train students with: hard labels and online KD."""


def modes_suffix(modes: list[str]) -> str:
    """The folder-name suffix of an evaluation that trained only some label modes (``""`` for both,
    ``"-online"`` for KD alone), so evaluations of other modes never share a folder."""
    return "" if sorted(modes) == sorted(STUDENT_MODES) else "-" + "-".join(modes)


def mode_label(mode: str) -> str:
    """A label mode as the reports name it: ``KD`` for online teacher labels, else the mode."""
    return "KD" if mode == "online" else mode


FIRST_LIGHT_REFINEMENT: dict[str, Any] = dict(method="hf_scdd", iterations=100, lr=0.003, r_bn=0.01, bn_targets="clean")
"""The recover fields of ``--method hf_scdd`` on CIFAR-size presets in session 7 (the sweep's
kmeans_clean_100_lr003), before the session-8 sweep chose a longer refinement: pinned for the folders made then."""


def unrefined_medoids(setup: DatasetSetup) -> dict[str, Any]:
    """The recover fields of ``--method hf_scdd`` before it refined its medoids on CIFAR-size presets (session 7):
    selection only. The benchmark folders made then recorded these values (lr and r_bn from the dataset preset,
    unused at 0 iterations); pinning them keeps those folders, and what their rows mean, valid."""
    from types import SimpleNamespace

    from hf_scdd.synthesis.presets import PRESETS, choose_preset

    preset = PRESETS[choose_preset(SimpleNamespace(preset="auto"), setup.name, 32)]
    return dict(method="hf_scdd", iterations=0, bn_targets="running", lr=preset["lr"], r_bn=preset["r_bn"])


def benchmark_setup(name: str, root: str | Path) -> tuple[DatasetSetup, Path]:
    """A dataset's setup and its models folder (``<root>/models/<name>``); one line and exit when the dataset
    is not on this machine (CIFAR-10 lives outside the repository)."""
    setup = DATASETS[name]
    if not setup.available():
        raise SystemExit(f"{name} is not available here ({setup.dataset}); the benchmark needs it on disk")
    return setup, Path(root) / "models" / name


SSL_MODELS = ("teacher", "mocov2", "probe_mocov2")
"""The models a benchmark of the SSL recovery model alone needs: the KD teacher and MoCo v2 with its probe (the
supervised control is the fidelity table's SRe²L rows only)."""


def train_models(setup: DatasetSetup, models: Path, workers: int = 2, only: tuple[str, ...] | None = None) -> None:
    """Squeeze (teacher, MoCo v2, supervised control) and the probes, or the ``only`` ones of them; finished ones
    are skipped."""
    for commands in (squeeze_commands(setup, models), probe_commands(setup, models)):
        run_all([c for c in commands if only is None or c[0] in only], models / "logs", workers=workers)


def start_benchmark(tag: str, args: Any) -> tuple[DatasetSetup, Path, Path]:
    """``(setup, models folder, work folder)`` of a per-IPC benchmark (``<root>/<tag>/<dataset>-ipc<N>``), after
    printing the hardware line its figures go with and training any missing model it needs (:data:`SSL_MODELS`)."""
    setup, models = benchmark_setup(args.dataset, args.root)
    print(f"[{tag}] {hardware_line()}", flush=True)
    train_models(setup, models, args.workers, only=SSL_MODELS)
    return setup, models, Path(args.root) / tag / f"{args.dataset}-ipc{args.ipc}"


def write_report(work: Path, text: str, payload: dict[str, Any]) -> None:
    """The benchmark's Markdown table and JSON beside its work folder (``<work>.md``, ``<work>.json``), the two
    files that are committed; then the table on stdout."""
    (work.parent / f"{work.name}.md").write_text(text)
    (work.parent / f"{work.name}.json").write_text(json.dumps(payload, indent=2))
    print(text)


def read_results(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())
