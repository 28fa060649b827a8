"""Where a post-training (KD) step of the built-in student goes, fp32 vs bf16: why its bf16 gain is smaller than
a CIFAR-size model's.

    python benchmarks/student_step.py                       # the built-in student: ResNet-10 w16, 1×28×28, batch 64
    python benchmarks/student_step.py --width 64 --channels 3 --size 32

One online-KD step as ``hf-scdd evaluate`` runs it, in its parts: the epoch's view plan, rendering the batch's
views (crop, flip, CutMix), the teacher's forward, the student's forward + KD loss + backward, and the AdamW
step. The teacher has the student's architecture (the built-in pipeline's case); random uint8 images stand in
for a distilled set (the cost does not depend on the pixels). fp32 and bf16 (the library's ``Precision``
autocast) alternate epoch by epoch in one single-threaded process, so load from other jobs falls on both alike;
the first epochs are warm-up and not counted. Prints milliseconds per step per part with the hardware line.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hf_scdd.augment.views import make_epoch_plan, render_views
from hf_scdd.losses.distillation import kd_loss
from hf_scdd.models.resnet import ResNet
from hf_scdd.stages.evaluate import EvaluateConfig
from hf_scdd.training.accelerator import Precision

from common import hardware_line

PARTS = ("plan", "views", "teacher", "student", "optimizer")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--images", type=int, default=100, help="set size (IPC 10 × 10 classes)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per precision (the first 5 are warm-up)")
    return p.parse_args()


class Setting:
    """One precision's own student, teacher and optimiser, and its per-part timings."""

    def __init__(self, precision: str, args: argparse.Namespace):
        torch.manual_seed(0)
        make = lambda: ResNet("resnet10", num_classes=10, in_channels=args.channels, width=args.width,  # noqa: E731
                              image_size=args.size)
        self.student, self.teacher = make().train(), make().eval()
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-3)
        self.precision = Precision(precision, "cpu")
        self.seconds: dict[str, list[float]] = {part: [] for part in PARTS}
        self.steps = 0
        protocol = EvaluateConfig()  # evaluate's default views and batch size
        self.view_spec, self.batch_size = protocol.view_spec(), protocol.batch_size

    def epoch(self, images: torch.Tensor, epoch: int, count: bool) -> None:
        start = time.perf_counter()
        plan = make_epoch_plan(len(images), self.batch_size, self.view_spec, 0, epoch, images.shape[-1])
        plan_seconds = time.perf_counter() - start
        for b in range(-(-len(images) // self.batch_size)):
            start = time.perf_counter()
            views = (render_views(images[plan.order[plan.batch_slots(b)].long()], plan, b, "cpu") - 0.5) / 0.25
            t_views = time.perf_counter()
            with self.precision.autocast(), torch.no_grad():
                targets = F.softmax(self.teacher(views).float() / 4.0, dim=1)
            t_teacher = time.perf_counter()
            with self.precision.autocast():
                logits = self.student(views).float()
            loss = kd_loss(logits, targets, 4.0)
            loss.backward()
            float(loss)  # the loop reads every loss back
            t_student = time.perf_counter()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            t_optimizer = time.perf_counter()
            if count:
                for part, seconds in zip(PARTS[1:], (t_views - start, t_teacher - t_views, t_student - t_teacher,
                                                     t_optimizer - t_student)):
                    self.seconds[part].append(seconds)
                self.steps += 1
        if count:
            self.seconds["plan"].append(plan_seconds)

    def milliseconds(self) -> dict[str, float]:
        """Mean milliseconds per step of every part (the plan's per-epoch cost spread over its steps)."""
        return {part: 1000 * sum(values) / self.steps for part, values in self.seconds.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (args.images, args.channels, args.size, args.size), dtype=torch.uint8)
    settings = {name: Setting(name, args) for name in ("no", "bf16")}
    for epoch in range(args.epochs):
        for setting in settings.values():
            setting.epoch(images, epoch, count=epoch >= 5)
    print(f"[student_step] {hardware_line()}; ResNet-10 width {args.width}, {args.channels}×{args.size}×{args.size}, "
          f"batch 64, {args.images} images, 1 thread\n")
    print("| precision | " + " | ".join(PARTS) + " | step | vs fp32 |")
    print("|---|" + "---:|" * (len(PARTS) + 2))
    fp32_total = sum(settings["no"].milliseconds().values())
    for name, setting in settings.items():
        ms = setting.milliseconds()
        total = sum(ms.values())
        print(f"| {'fp32' if name == 'no' else name} | " + " | ".join(f"{ms[p]:.1f}" for p in PARTS)
              + f" | {total:.1f} | {fp32_total / total:.2f}× |")
    no, bf16 = settings["no"].milliseconds(), settings["bf16"].milliseconds()
    print(f"\nmodel parts alone (teacher + student): {(no['teacher'] + no['student']) / (bf16['teacher'] + bf16['student']):.2f}×")


if __name__ == "__main__":
    main()
