"""Recovery throughput: the library (fp32/bf16, one-by-one, grouped, 1 vs 2 processes) vs a plain reference loop.

Prints images·iterations per second, ratios and peak memory for two shapes:

* ``builtin``: the built-in default (Fashion-MNIST: 10 classes = one batch of 10, 1×28×28, ResNet-18 with the
  CIFAR stem), the shape ``hf-scdd recover`` runs with no options;
* ``cifar100``: SC-DD's CIFAR-100 recovery (ResNet-18 CIFAR stem, batch 100 = one image per class, 3×32×32).

The reference loop is written here, independently of the library: fp32, one batch at a time, forward hooks
on every BN layer computing the exact SC-DD objective with ``torch.norm``, Adam(0.5, 0.9), cosine LR, roll
jitter, per-step clamp (what ``SCDD/cifar100_code/recover/recover_cifar100.py`` does, minus file I/O).

The library's settings run at each of ``--precisions``: ``fp32`` (``hf-scdd recover --mixed_precision no``) and
``bf16`` (``--mixed_precision bf16``: the library's own :class:`~hf_scdd.training.accelerator.Precision` autocast
around the forward pass; BN statistics, losses, images and Adam state stay float32). The default is
``fp32,bf16`` where bf16 runs natively (a CPU with ``amx_bf16`` or ``avx512_bf16``, a CUDA GPU with bf16) and
``fp32`` elsewhere: emulated bf16 on an AVX2-only CPU is ~17x slower than fp32. The reference stays fp32.

Every setting runs in a fresh subprocess so its peak memory (``ru_maxrss`` on CPU, ``max_memory_allocated`` on
CUDA) is its own; one warm-up step is excluded from the timing. Weights are random (speed does not depend on
them); BN running statistics come from a few train-mode forwards. Every table starts with the hardware line
(CPU model, cores, amx_bf16 / avx512_bf16 / avx2, GPU name); the results, hardware and date are written as
JSON (``--json``, default ``benchmarks/results/recover_speed.json``). The last line checks issue 12's target
on the CIFAR-100 shape: the best library setting ≥ 3× the reference with bf16 units, ≥ 1.5× without.

No ``torch.compile`` setting: the library opens a fresh ``BNStatsRecorder`` (new BN forward hooks) for every
``synthesize_group`` call, so a compiled model would be re-traced per group, and compiling ResNet-18's forward
and input-backward with Inductor would take longer than the few timed iterations per setting run here.

    python benchmarks/recover_speed.py                       # CPU, a few iterations per setting (< 5 min)
    python benchmarks/recover_speed.py --shapes cifar100 --precisions fp32,bf16 --iterations 3
    python benchmarks/recover_speed.py --iterations 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "recover_speed.json"
SHAPES = {
    # name: (channels, image size, classes per batch)
    "builtin": (1, 28, 10),
    "cifar100": (3, 32, 100),
}


def hardware_line(device: str) -> str:
    """One line naming the hardware every figure below was measured on."""
    import torch

    from hf_scdd.utils import CPU_KIND_FLAGS, hardware_summary

    hw = hardware_summary()
    flags = ", ".join(f"{flag} {'yes' if flag in hw['cpu_flags'] else 'no'}" for flag in CPU_KIND_FLAGS)
    line = f"# hardware: {hw['cpu_model']}, {hw['cores']} cores ({flags}); torch {hw['torch']}"
    if hw["onednn_isa_cap"]:
        line += f"; oneDNN capped at {hw['onednn_isa_cap']} (bf16 units {'usable' if native_bf16(device) else 'not usable'})"
    if device.startswith("cuda"):
        line += f"; device {torch.cuda.get_device_name(torch.device(device))}"
    return line


def native_bf16(device: str) -> bool:
    """Whether bf16 is native here: a bf16 GPU, or the library's CPU check (flags and oneDNN's cap)."""
    import torch

    from hf_scdd.training.accelerator import cpu_has_fast_bf16

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def default_precisions(device: str) -> str:
    """``fp32,bf16`` where bf16 is native here, else ``fp32``."""
    return "fp32,bf16" if native_bf16(device) else "fp32"


def build_model(channels: int, size: int, classes: int, device: str):
    import torch

    from hf_scdd.models import ResNet

    torch.manual_seed(0)
    model = ResNet("resnet18", num_classes=classes, stem="cifar", in_channels=channels, width=64, image_size=size,
                   mean=[0.5] * channels, std=[0.25] * channels)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, channels, size, size))
    return model.eval().requires_grad_(False).to(device)


# --------------------------------------------------------------------------------------------------------
# The plain reference loop (fp32, one batch, hooks, exact objective)
# --------------------------------------------------------------------------------------------------------


def reference_loop(model, batch: int, channels: int, size: int, iterations: int, device: str) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Hook:
        def __init__(self, module):
            self.handle = module.register_forward_hook(self.hook)

        def hook(self, module, inputs, output):
            x = inputs[0]
            c = x.shape[1]
            mean = x.mean([0, 2, 3])
            var = x.permute(1, 0, 2, 3).contiguous().view([c, -1]).var(1, unbiased=False)
            self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(
                module.running_mean.data - mean, 2)

    hooks = [Hook(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    multipliers = [10.0] + [1.0] * (len(hooks) - 1)
    inputs = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    targets = torch.arange(batch, device=device) % 1000
    optimizer = torch.optim.Adam([inputs], lr=0.4, betas=(0.5, 0.9), eps=1e-8)
    low = torch.full((1, channels, 1, 1), (0 - 0.5) / 0.25, device=device)
    high = torch.full((1, channels, 1, 1), (1 - 0.5) / 0.25, device=device)
    for it in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * (1 + math.cos(math.pi * it / iterations)) * 0.4
        off1, off2 = random.randint(0, 4), random.randint(0, 4)
        inputs_jit = torch.roll(inputs, shifts=(off1, off2), dims=(2, 3))
        optimizer.zero_grad()
        outputs = model(inputs_jit)
        loss_ce = F.cross_entropy(outputs, targets)
        loss_bn = sum(m * h.r_feature for m, h in zip(multipliers, hooks))
        loss = loss_ce + 0.005 * loss_bn
        loss.backward()
        optimizer.step()
        inputs.data = torch.max(torch.min(inputs.data, high), low)
    for h in hooks:
        h.handle.remove()


# --------------------------------------------------------------------------------------------------------
# One setting, in its own process
# --------------------------------------------------------------------------------------------------------


def run_setting(args) -> dict:
    import torch

    from hf_scdd.synthesis.engine import SynthesisSpec, synthesize_group
    from hf_scdd.synthesis.units import make_groups, plan_units
    from hf_scdd.training.accelerator import Precision

    channels, size, classes = SHAPES[args.shape]
    device = args.device
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    model = build_model(channels, size, classes, device)
    spec = SynthesisSpec(iterations=args.iterations, lr=0.4, r_bn=0.005, first_bn_multiplier=10.0, jitter=4,
                         random_crop=False, crop_scale_min=0.08, channels=channels, image_size=size,
                         mean=[0.5] * channels, std=[0.25] * channels)
    warm = SynthesisSpec(**{**spec.__dict__, "iterations": 1})
    units = plan_units(classes, args.units, 0, seed=0)
    groups = make_groups(units, args.group)
    mine = groups[rank::world]
    # what `hf-scdd recover --mixed_precision {no,bf16}` runs: the stage's Precision around the forward pass
    precision = Precision.resolve({"fp32": "no"}.get(args.precision, args.precision), device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if world > 1:
            torch.distributed.barrier()

    if args.mode == "reference":
        reference_loop(model, classes, channels, size, 1, device)
        sync()
        start = time.perf_counter()
        for _ in range(args.units):
            reference_loop(model, classes, channels, size, args.iterations, device)
    else:
        synthesize_group(model, mine[0], warm, device=device, precision=precision)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        for group in mine:
            synthesize_group(model, group, spec, device=device, precision=precision)
    sync()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    work = args.units * classes * args.iterations
    return {"seconds": elapsed, "img_it_per_s": work / elapsed, "peak_bytes": peak, "rank": rank}


def launch(shape: str, mode: str, units: int, group: int, processes: int, iterations: int, device: str,
           threads: int, precision: str = "fp32") -> dict:
    """Run one setting in fresh process(es); returns the slowest rank's time and the summed peak memory."""
    out = Path(tempfile.mkdtemp(prefix="recover_speed_"))
    worker = [__file__, "--worker", "--shape", shape, "--mode", mode, "--units", str(units), "--group",
              str(group), "--iterations", str(iterations), "--device", device, "--result", str(out),
              "--precision", precision]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), *worker]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    seconds = max(r["seconds"] for r in results)
    work = units * SHAPES[shape][2] * iterations
    return {"seconds": seconds, "img_it_per_s": work / seconds, "peak_mib": sum(r["peak_bytes"] for r in results) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="builtin,cifar100")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads per process (1: on a shared 2-core box, 2 spinning OpenMP threads "
                             "under load were up to 100x slower); one extra row uses all cores in one process")
    parser.add_argument("--precisions", default=None,
                        help="library precisions to run, comma-separated from fp32,bf16 (default: fp32,bf16 where "
                             "bf16 is native here - amx_bf16/avx512_bf16 CPU or bf16 GPU - else fp32)")
    parser.add_argument("--json", default=str(DEFAULT_JSON),
                        help="where to write the results as JSON ('' to skip; default: %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="builtin", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="library", help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--group", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_setting(args)
        Path(args.result, f"rank{result['rank']}.json").write_text(json.dumps(result))
        return

    precisions = [p.strip() for p in (args.precisions or default_precisions(args.device)).split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        parser.error(f"--precisions takes fp32 and/or bf16, got {args.precisions!r}")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    hardware = hardware_line(args.device)
    began = time.perf_counter()
    load_start = os.getloadavg()
    print(hardware)
    print(f"# recover_speed: device={args.device}, iterations/setting={args.iterations}, threads={args.threads}, "
          f"precisions={','.join(precisions)}, load average {load_start[0]:.1f}", flush=True)
    rows = []
    cores = os.cpu_count() or 1
    for shape in shapes:
        units, group = (4, 4) if shape == "builtin" else (2, 2)
        half = max(1, group // 2)
        # (label, mode, units, group, processes, threads, precision)
        settings = [("reference loop (fp32, 1 batch, hooks)", "reference", units, 1, 1, args.threads, "fp32")]
        for p in precisions:
            settings.append((f"library {p}, one by one", "library", units, 1, 1, args.threads, p))
            if p == "fp32":
                settings.append((f"library {p}, grouped G={group}", "library", units, group, 1, args.threads, p))
            if args.device == "cpu":
                if half > 1:  # G=1 in 1 process is the one-by-one row
                    settings.append((f"library {p}, G={half}, 1 process", "library", units, half, 1, args.threads, p))
                settings.append((f"library {p}, G={half}, 2 processes", "library", units, half, 2, args.threads, p))
                if cores > 1:  # one process on every core: what a plain `hf-scdd recover` gets
                    settings.append((f"library {p}, G={half}, 1 process x {cores} threads", "library", units, half,
                                     1, cores, p))
        for label, mode, n_units, g, processes, threads, p in settings:
            r = launch(shape, mode, n_units, g, processes, args.iterations, args.device, threads, p)
            r.update(label=label, mode=mode, units=n_units, group=g, processes=processes, threads=threads,
                     precision=p)
            rows.append((shape, label, r))
            print(f"{shape:9s} {label:44s} {r['img_it_per_s']:9.1f} img·it/s  {r['seconds']:7.2f} s  "
                  f"peak {r['peak_mib']:8.0f} MiB", flush=True)

    load_end = os.getloadavg()
    print(f"\n{hardware}")
    print(f"# ratios (images·iterations per second; {args.iterations} iterations/setting; load average "
          f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end)")
    summary: dict = {}
    for shape in shapes:
        by = {label: r for s, label, r in rows if s == shape}
        ref = next(r for label, r in by.items() if label.startswith("reference"))
        print(f"\n{shape}: | setting | img·it/s | × reference | peak memory |")
        print("|---|---|---|---|")
        for label, r in by.items():
            r["x_reference"] = r["img_it_per_s"] / ref["img_it_per_s"]
            peak = f"{r['peak_mib']:.0f} MiB" + (" (sum)" if r["processes"] > 1 else "")
            print(f"| {label} | {r['img_it_per_s']:.1f} | {r['x_reference']:.2f} | {peak} |")
        for p in precisions:
            two = [r for label, r in by.items() if r["precision"] == p and r["processes"] == 2]
            one = [r for label, r in by.items() if r["mode"] == "library" and r["precision"] == p
                   and r["processes"] == 1 and r["threads"] == args.threads and two and r["group"] == two[0]["group"]]
            if two and one:
                print(f"{shape} {p}: 2 processes vs 1 process (same G, {args.threads} thread(s) each) "
                      f"{two[0]['img_it_per_s'] / one[0]['img_it_per_s']:.2f}×")
        if "fp32" in precisions and "bf16" in precisions:
            f32 = by.get("library fp32, one by one")
            b16 = by.get("library bf16, one by one")
            if f32 and b16:
                print(f"{shape}: bf16 vs fp32 (library, one by one) {b16['img_it_per_s'] / f32['img_it_per_s']:.2f}×")
        library = [r for r in by.values() if r["mode"] == "library"]
        best = max(library, key=lambda r: r["img_it_per_s"])
        summary[shape] = {"best": best["label"], "best_x_reference": best["x_reference"]}

    bf16_units = default_precisions(args.device) == "fp32,bf16"  # the hardware's bf16 units decide the target
    target = 3.0 if bf16_units else 1.5
    check = None
    print()
    print(hardware)
    if "cifar100" in summary:
        best = summary["cifar100"]
        met = best["best_x_reference"] >= target
        check = {"best": best["best"], "x_reference": best["best_x_reference"], "bf16_units": bf16_units,
                 "target": target, "met": met}
        print(f"CIFAR-100 shape: best library setting = {best['best_x_reference']:.2f}× the reference "
              f"({best['best']}) (target ≥ 3× with bf16 units, ≥ 1.5× without): "
              f"{'bf16 units here' if bf16_units else 'no bf16 units here'} → target {target:g}× "
              f"{'MET' if met else 'NOT MET'}"
              + (" (bf16 not measured: add --precisions fp32,bf16)" if bf16_units and "bf16" not in precisions else ""))
    else:
        print("CIFAR-100 shape not run (--shapes): no target check")

    if args.json:
        from hf_scdd.utils import hardware_summary

        record = {
            "benchmark": "recover_speed",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "hardware": {**hardware_summary(), "line": hardware.removeprefix("# hardware: ")},
            "device": args.device,
            "iterations": args.iterations,
            "threads": args.threads,
            "precisions": precisions,
            "load_average": {"start": list(load_start), "end": list(load_end)},
            "wall_seconds": time.perf_counter() - began,
            "rows": [{"shape": shape, **r} for shape, _, r in rows],
            "best": summary,
            "target_check": check,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"# results written to {path}")


if __name__ == "__main__":
    main()
