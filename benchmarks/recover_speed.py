"""Recovery throughput: the library (one-by-one, grouped, 1 vs 2 processes) against a plain reference loop.

Prints images·iterations per second, ratios and peak memory for two shapes:

* ``builtin``: the built-in default (Fashion-MNIST: 10 classes = one batch of 10, 1×28×28, ResNet-18 with the
  CIFAR stem), the shape ``hf-scdd recover`` runs with no options;
* ``cifar100``: SC-DD's CIFAR-100 recovery (ResNet-18 CIFAR stem, batch 100 = one image per class, 3×32×32).

The reference loop is written here, independently of the library: fp32, one batch at a time, forward hooks
on every BN layer computing the exact SC-DD objective with ``torch.norm``, Adam(0.5, 0.9), cosine LR, roll
jitter, per-step clamp (what ``SCDD/cifar100_code/recover/recover_cifar100.py`` does, minus file I/O).

Every setting runs in a fresh subprocess so its peak memory (``ru_maxrss`` on CPU, ``max_memory_allocated`` on
CUDA) is its own; one warm-up step is excluded from the timing. Weights are random (speed does not depend on
them); BN running statistics come from a few train-mode forwards.

    python benchmarks/recover_speed.py                       # CPU, a few iterations per setting (< 3 min)
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
from pathlib import Path

SHAPES = {
    # name: (channels, image size, classes per batch)
    "builtin": (1, 28, 10),
    "cifar100": (3, 32, 100),
}


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
        synthesize_group(model, mine[0], warm, device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        for group in mine:
            synthesize_group(model, group, spec, device=device)
    sync()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    work = args.units * classes * args.iterations
    return {"seconds": elapsed, "img_it_per_s": work / elapsed, "peak_bytes": peak, "rank": rank}


def launch(shape: str, mode: str, units: int, group: int, processes: int, iterations: int, device: str,
           threads: int) -> dict:
    """Run one setting in fresh process(es); returns the slowest rank's time and the summed peak memory."""
    out = Path(tempfile.mkdtemp(prefix="recover_speed_"))
    worker = [__file__, "--worker", "--shape", shape, "--mode", mode, "--units", str(units), "--group",
              str(group), "--iterations", str(iterations), "--device", device, "--result", str(out)]
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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
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

    print(f"# recover_speed: device={args.device}, iterations/setting={args.iterations}, threads={args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    cores = os.cpu_count() or 1
    for shape in args.shapes.split(","):
        units, group = (4, 4) if shape == "builtin" else (2, 2)
        settings = [
            ("reference loop (fp32, 1 batch, hooks)", "reference", units, 1, 1, args.threads),
            ("library, one by one", "library", units, 1, 1, args.threads),
            (f"library, grouped G={group}", "library", units, group, 1, args.threads),
        ]
        if args.device == "cpu":
            half = max(1, group // 2)
            settings.append((f"library, G={half}, 1 process", "library", units, half, 1, args.threads))
            settings.append((f"library, G={half}, 2 processes", "library", units, half, 2, args.threads))
            settings.append((f"library, G={half}, 1 process x {cores} threads", "library", units, half, 1, cores))
        for label, mode, n_units, g, processes, threads in settings:
            r = launch(shape, mode, n_units, g, processes, args.iterations, args.device, threads)
            rows.append((shape, label, r))
            print(f"{shape:9s} {label:42s} {r['img_it_per_s']:9.1f} img·it/s  {r['seconds']:7.2f} s  "
                  f"peak {r['peak_mib']:8.0f} MiB", flush=True)
    print("\n# ratios (images·iterations per second)")
    for shape in args.shapes.split(","):
        by = {label: r for s, label, r in rows if s == shape}
        ref = next(r for label, r in by.items() if label.startswith("reference"))
        for label, r in by.items():
            if not label.startswith("reference"):
                print(f"{shape:9s} {label:42s} {r['img_it_per_s'] / ref['img_it_per_s']:5.2f}× reference")
        two = [r for label, r in by.items() if label.endswith("2 processes")]
        one = [r for label, r in by.items() if label.endswith("1 process")]
        if two and one:
            print(f"{shape:9s} 2 processes vs 1 process (same G, threads) "
                  f"{two[0]['img_it_per_s'] / one[0]['img_it_per_s']:5.2f}×")


if __name__ == "__main__":
    main()
