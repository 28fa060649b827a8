"""The bf16 premise on this CPU: a frozen network's forward + input-gradient backward, fp32 vs bf16 autocast.

    python benchmarks/bf16_premise.py              # ResNet-18 (CIFAR stem, w64) at batch 100, ResNet-10 w16 at 256

That is the core of one recovery step without the library around it (issue 12 quoted 6.5x for ResNet-18 on an
AMD EPYC with avx512_bf16, and 17x *slower* on an AVX2-only CPU). How much of it a recovery or training step
keeps is what ``recover_speed.py`` and ``train_speed.py`` measure. Both precisions alternate in one process,
one intra-op thread, best of ``--rounds`` blocks, so load from other jobs falls on both alike.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import hardware_line

SHAPES = {"resnet18-w64-32px-b100": ("resnet18", 64, 3, 32, 100), "resnet10-w16-28px-b256": ("resnet10", 16, 1, 28, 256)}


def seconds_per_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool, steps: int) -> float:
    """Forward (bf16 autocast or fp32) + backward to the input, averaged over ``steps`` after one warm-up."""

    def step() -> None:
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from hf_scdd.models.resnet import ResNet

    torch.set_num_threads(1)
    print(f"# hardware: {hardware_line()}; 1 thread")
    print("| shape | fp32 s/step | bf16 s/step | bf16 speed-up |\n|---|---:|---:|---:|")
    for name, (arch, width, channels, size, batch) in SHAPES.items():
        torch.manual_seed(0)
        model = ResNet(arch=arch, width=width, in_channels=channels, image_size=size, num_classes=100).eval()
        model.requires_grad_(False)
        x = torch.randn(batch, channels, size, size, requires_grad=True)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                times[bf16].append(seconds_per_step(model, x, bf16, args.steps))
        fp32, bf16 = min(times[False]), min(times[True])
        print(f"| {name} | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
