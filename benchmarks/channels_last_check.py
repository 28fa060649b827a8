"""Does multi-threaded CPU training in channels_last crash this torch build? (Why the library keeps the default
memory layout although ``benchmarks/train_speed.py`` measures channels_last 1.1-1.4x faster per step.)

    python benchmarks/channels_last_check.py                 # 8 trials per setting, 2 threads
    python benchmarks/channels_last_check.py --trials 20 --threads 4

Each trial is a fresh process that trains the library's ResNet-10 (width 4, 1×12×12 inputs, batch 5: the shape of
the test suite's tiny students, whose last batches are small) for a few AdamW steps, with its weights in the
default layout or in channels_last. The script prints how many trials of each setting died of a signal, with the
hardware line (which names the torch version).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from common import hardware_line

TRIAL = """
import torch
from hf_scdd.models.resnet import ResNet
torch.set_num_threads({threads})
model = ResNet("resnet10", num_classes=3, in_channels=1, width=4, image_size=12).train()
if {channels_last}:
    model = model.to(memory_format=torch.channels_last)
optimizer = torch.optim.AdamW(model.parameters())
for _ in range(8):
    model(torch.randn(5, 1, 12, 12)).sum().backward()
    optimizer.step()
"""


def crashed(channels_last: bool, threads: int) -> bool:
    """True when one trial's process was killed by a signal (a segmentation fault), False when it finished."""
    code = TRIAL.format(threads=threads, channels_last=channels_last)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode > 0:
        raise RuntimeError(f"the trial failed with an error, not a crash:\n{result.stderr[-2000:]}")
    return result.returncode < 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(f"# {hardware_line()}; {args.threads} threads, {args.trials} trials per layout")
    for channels_last in (False, True):
        crashes = sum(crashed(channels_last, args.threads) for _ in range(args.trials))
        layout = "channels_last" if channels_last else "default layout"
        print(f"{layout}: {crashes} of {args.trials} trials crashed", flush=True)


if __name__ == "__main__":
    main()
