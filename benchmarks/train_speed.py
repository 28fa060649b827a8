"""Training-step speed, fp32 vs bf16, for the shapes squeeze and post-training run (issue 12's "epochs ≥ 2× faster
where bf16 units exist"), in the default memory layout and with channels_last weights (faster, but not used by the
library: it crashed torch 2.13's CPU build in multi-threaded training, ``benchmarks/channels_last_check.py``).

    python benchmarks/train_speed.py                    # a few steps per shape, the four settings interleaved
    python benchmarks/train_speed.py --steps 20 --threads 2
    python benchmarks/train_speed.py --compile --shapes resnet10-w16-28px-b64   # + fp32 / bf16 under torch.compile

One training step = forward + cross-entropy + backward + AdamW step of the library's ``ResNet`` in train mode,
under the library's own :class:`~hf_scdd.training.accelerator.Precision` (what ``--mixed_precision bf16|no`` runs:
autocast for the forward, fp32 weights, optimiser and loss). That is the core of both a supervised squeeze step
and a post-training student step (MoCo v2 adds a second, no-grad forward; KD a teacher forward). The four
settings (fp32 / bf16 × default / channels_last weights) get their own copy of the model and alternate in blocks
in one process, so load from other jobs falls on all alike; the ratios are reported per shape with the hardware
line. ``--compile`` adds fp32 and bf16 under ``torch.compile`` (the library does not compile: see RESULTS.md for
what it would buy a post-training run, compile time included). Results also go to
``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from common import HERE, hardware_line

SHAPES = {
    # name: (arch, width, channels, image size, batch): the built-in student, a CIFAR student, SC-DD's ResNet-18
    "resnet10-w16-28px-b64": ("resnet10", 16, 1, 28, 64),
    "resnet10-w64-32px-b128": ("resnet10", 64, 3, 32, 128),
    "resnet18-w64-32px-b128": ("resnet18", 64, 3, 32, 128),
}


def step_time(model, optimizer, x, y, precision, steps: int) -> float:
    """Seconds per training step over ``steps`` steps (after the caller's warm-up)."""
    start = time.perf_counter()
    for _ in range(steps):
        with precision.autocast():
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


SETTINGS = {  # name: (precision, channels_last)
    "fp32": ("no", False), "fp32-cl": ("no", True), "bf16": ("bf16", False), "bf16-cl": ("bf16", True),
}
COMPILED = ("fp32", "bf16")  # with --compile: these settings again, the model under torch.compile (inductor)


def build_runs(shape: str, compile_too: bool) -> dict:
    """Setting name → (model to call, optimiser, precision), each with its own seeded copy of the model."""
    from hf_scdd.models.resnet import ResNet
    from hf_scdd.training.accelerator import Precision

    arch, width, channels, size, _ = SHAPES[shape]
    settings = {**SETTINGS, **({f"{n}-compiled": SETTINGS[n] for n in COMPILED} if compile_too else {})}
    runs = {}
    for name, (precision, channels_last) in settings.items():
        torch.manual_seed(0)
        model = ResNet(arch=arch, width=width, in_channels=channels, image_size=size, num_classes=10).train()
        if channels_last:  # convolutions follow their weight's layout: NHWC activations without input copies
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        call = torch.compile(model) if name.endswith("-compiled") else model
        runs[name] = (call, optimizer, Precision.resolve(precision, "cpu"))
    return runs


def measure(shape: str, steps: int, rounds: int, compile_too: bool = False) -> dict:
    _, _, channels, size, batch = SHAPES[shape]
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    runs = build_runs(shape, compile_too)
    warmup = {}
    for name, (model, optimizer, precision) in runs.items():  # warm-up (oneDNN primitives; compilation)
        start = time.perf_counter()
        step_time(model, optimizer, x, y, precision, 2)
        warmup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, optimizer, precision) in runs.items():
            times[name].append(step_time(model, optimizer, x, y, precision, steps))
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"shape": shape, **{f"{name}_s_per_step": t for name, t in median.items()},
            "bf16_speedup": median["fp32"] / median["bf16"], "bf16_speedup_cl": median["fp32-cl"] / median["bf16-cl"],
            "cl_gain_fp32": median["fp32"] / median["fp32-cl"], "cl_gain_bf16": median["bf16"] / median["bf16-cl"],
            "rounds": rounds, "steps_per_round": steps,
            **({"compiled_gain_fp32": median["fp32"] / median["fp32-compiled"],
                "compiled_gain_bf16": median["bf16"] / median["bf16-compiled"],
                "bf16_compiled_vs_fp32": median["fp32"] / median["bf16-compiled"],
                "compile_seconds": {n: warmup[n] for n in runs if n.endswith("-compiled")}} if compile_too else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="alternating fp32 / bf16 blocks per shape (median)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--compile", action="store_true",
                   help="also fp32 and bf16 under torch.compile (inductor: needs a C++ compiler; compiling takes "
                        "tens of seconds per model, printed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hardware = hardware_line()
    print(f"# hardware: {hardware}; {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| shape | fp32 | fp32 CL | bf16 | bf16 CL | bf16 vs fp32 | bf16 CL vs fp32 CL | CL gain fp32 | CL gain bf16 |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows = []
    for shape in args.shapes:
        row = measure(shape, args.steps, args.rounds, args.compile)
        rows.append(row)
        print(f"| {shape} | " + " | ".join(f"{row[f'{name}_s_per_step']:.3f}" for name in SETTINGS)
              + f" | {row['bf16_speedup']:.2f}× | {row['bf16_speedup_cl']:.2f}× | {row['cl_gain_fp32']:.2f}× | "
              f"{row['cl_gain_bf16']:.2f}× |", flush=True)
    if args.compile:
        print("\n| shape | fp32 compiled | bf16 compiled | compile gain fp32 | compile gain bf16 | bf16 compiled vs fp32 "
              "| compile time fp32 / bf16 |\n|---|---:|---:|---:|---:|---:|---|")
        for row in rows:
            seconds = row["compile_seconds"]
            print(f"| {row['shape']} | {row['fp32-compiled_s_per_step']:.3f} | {row['bf16-compiled_s_per_step']:.3f} | "
                  f"{row['compiled_gain_fp32']:.2f}× | {row['compiled_gain_bf16']:.2f}× | "
                  f"{row['bf16_compiled_vs_fp32']:.2f}× | {seconds['fp32-compiled']:.0f} s / "
                  f"{seconds['bf16-compiled']:.0f} s |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; seconds per step; CL = channels_last weights; "
          "target: bf16 ≥ 2× fp32 where the CPU has bf16 units")
    out = Path(HERE) / "results" / "train_speed.json"
    out.write_text(json.dumps({"date": str(date.today()), "hardware": hardware, "args": vars(args),
                               "load_end": os.getloadavg()[0], "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
