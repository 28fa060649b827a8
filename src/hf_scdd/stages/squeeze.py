"""``hf-scdd squeeze``: pre-train the recovery backbone, MoCo v2 (SC-DD) or supervised (the SRe²L control).

MoCo v2 as in the official CIFAR demo that SC-DD's CIFAR recipe matches: query encoder = backbone + 2-layer
MLP head, momentum key encoder, a queue of negative keys, InfoNCE at temperature ``T``, SGD with cosine decay,
split-BN within a process and shuffle-BN across processes (:mod:`hf_scdd.models.moco`). ``--method
supervised`` trains the same backbone with cross-entropy. What each method builds is in
:mod:`hf_scdd.training.pretrain`; the loop (checkpoint/resume, trackers, progress) is
:func:`hf_scdd.training.loop.train`. With the default ``bn_splits=8`` the BN group size is
``batch_size / 8`` whatever the number of processes. The output is a plain, Hub-ready
:class:`~hf_scdd.models.ResNet` in ``output_dir/backbone``; rerun the same command to resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configs import Check, CompileFields, ConfigError, StageConfig, discard_on_failure, in_range
from ..hub.push import push_model_folder
from ..models.loading import BACKBONE_DIR
from ..models.resnet import ARCHITECTURES, STEMS, plain_resnet, save_model_atomically
from ..training.accelerator import finish_trackers
from ..training.loaders import training_loader
from ..training.loop import CHECKPOINT_DIR, cosine_schedule, remove_checkpoints, train
from ..training.pretrain import plan_mocov2, plan_supervised
from ..training.stage import begin_work, load_stage_data, start_stage

METHODS = ("mocov2", "supervised")


@dataclass
class SqueezeConfig(CompileFields, StageConfig):
    """``hf-scdd squeeze``: MoCo v2 (default) or supervised pre-training of a BN ResNet.

    Defaults: the MoCo CIFAR recipe (K=4096, m=0.99, T=0.1, MLP head, 128-d, 8 BN splits, SGD lr 0.06
    momentum 0.9, wd 5e-4, cosine, no warm-up) at batch 256, scaled down for 2 CPU cores: ResNet-10 of width
    16 (CIFAR stem) for 2 epochs over a seeded 15k-image subset of the training split (116 steps). For a
    full-size run use e.g. ``--arch resnet18 --width 64 --epochs 200 --max_train_samples 0 --batch_size 512``.
    """

    output_dir: str = field(default="outputs/squeeze", metadata={"help": "Folder the stage writes to."})
    method: str = field(default="mocov2", metadata={"help": "'mocov2' (self-supervised) or 'supervised'."})
    arch: str = field(default="resnet10", metadata={"help": "Backbone architecture (resnet10/18/34/50/101)."})
    width: int = field(default=16, metadata={"help": "First-stage width (64 = torchvision)."})
    stem: str = field(default="cifar", metadata={"help": "'cifar' (3x3, no max-pool) or 'imagenet'."})
    epochs: int = field(default=2, metadata={"help": "Pre-training epochs over the (sub)set."})
    batch_size: int = field(default=256, metadata={"help": "GLOBAL batch size (split over processes)."})
    lr: float | None = field(
        default=None, metadata={"help": "Peak learning rate; default 0.06 (mocov2) or 0.1 (supervised)."}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps before the cosine decay."})
    moco_dim: int = field(default=128, metadata={"help": "MoCo projection dimension."})
    moco_k: int = field(default=4096, metadata={"help": "Queue size K (a multiple of batch_size)."})
    moco_m: float = field(default=0.99, metadata={"help": "Key-encoder momentum m."})
    moco_t: float = field(default=0.1, metadata={"help": "InfoNCE temperature T."})
    bn_splits: int = field(
        default=8, metadata={"help": "BN groups per global batch (SplitBatchNorm / shuffle-BN); 1 disables."}
    )
    crop_min_scale: float = field(default=0.2, metadata={"help": "Lower bound of RandomResizedCrop's scale."})
    max_train_samples: int = field(
        default=15000,
        metadata={"help": "Train on a seeded random subset of this many images (0 = all); with --streaming, "
                  "epochs of this many examples of the shuffled stream."},
    )
    checkpoint_steps: int = field(
        default=0, metadata={"help": "Also checkpoint every N steps (every epoch is always checkpointed)."}
    )

    def resolved_lr(self) -> float:
        """``--lr``, or MoCo's 0.06 / the supervised recipe's 0.1."""
        if self.lr is not None:
            return self.lr
        return 0.06 if self.method == "mocov2" else 0.1

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            (self.method in METHODS, f"unknown --method {self.method!r}; choose one of {list(METHODS)}"),
            (self.arch in ARCHITECTURES, f"unknown --arch {self.arch!r}; choose one of {sorted(ARCHITECTURES)}"),
            (self.stem in STEMS, f"unknown --stem {self.stem!r}; choose one of {list(STEMS)}"),
            (self.width >= 1, f"--width must be >= 1, got {self.width}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            in_range("lr", self.lr, 0, 10, low_open=True, note="SGD diverges far below that; MoCo uses 0.06"),
            in_range("momentum", self.momentum, 0, 1, low_open=False),
            in_range("weight_decay", self.weight_decay, 0, 1),
            (self.warmup_steps >= 0, f"--warmup_steps must be >= 0, got {self.warmup_steps}"),
            in_range("moco_m", self.moco_m, 0, 1),
            in_range("moco_t", self.moco_t, 0, 10, low_open=True),
            (self.moco_k >= 1 and self.moco_dim >= 1, "--moco_k and --moco_dim must be >= 1"),
            (self.bn_splits >= 1, f"--bn_splits must be >= 1, got {self.bn_splits}"),
            in_range("crop_min_scale", self.crop_min_scale, 0, 1, low_open=True),
            (self.max_train_samples >= 0, f"--max_train_samples must be >= 0 (0 = all), got {self.max_train_samples}"),
            (self.checkpoint_steps >= 0, f"--checkpoint_steps must be >= 0, got {self.checkpoint_steps}"),
        ]


def main(config: SqueezeConfig) -> Path:
    """Pre-train a backbone; returns ``output_dir/backbone`` (Hub-ready). Rerun the same command to resume."""
    from accelerate.utils import set_seed

    out = Path(config.output_dir)
    final = out / BACKBONE_DIR
    run_name = f"squeeze_{config.method}"
    start = start_stage(config, run_name, final)
    if start.finished:
        return final
    num_processes, precision = start.state.num_processes, start.precision
    if config.batch_size % num_processes:
        raise ConfigError(f"--batch_size {config.batch_size} is not divisible by {num_processes} processes")
    data = load_stage_data(config)
    source = data.source("train").subset(config.max_train_samples, config.seed)
    if len(source) < config.batch_size:
        raise ConfigError(
            f"{len(source)} training images of {data.name!r} are fewer than one batch: lower --batch_size "
            f"(now {config.batch_size}) or raise --max_train_samples"
        )

    accelerator = begin_work(config, run_name, precision, data)
    with discard_on_failure(out, CHECKPOINT_DIR, "logs"):
        set_seed(config.seed)  # identical initialisation (and MoCo queue) on every process
        plan = (plan_mocov2 if config.method == "mocov2" else plan_supervised)(config, data, accelerator)
        optimizer = torch.optim.SGD(
            plan.model.parameters(), lr=config.resolved_lr(), momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        model, optimizer = accelerator.prepare(plan.model, optimizer)
        loader = training_loader(accelerator, source, config.batch_size // num_processes, seed=config.seed)
        # Unprepared on purpose: one scheduler step per optimiser step whatever the process count.
        scheduler = cosine_schedule(optimizer, config.epochs * len(loader), config.warmup_steps)
        set_seed(config.seed, device_specific=True)  # different views on each process
        progress = train(
            accelerator, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
            step_fn=plan.make_step_fn(accelerator, model, precision), epochs=config.epochs, output_dir=out,
            extra_state=plan.extra_state, checkpoint_steps=config.checkpoint_steps,
            desc=f"squeeze[{config.method}]", precision=precision,
        )
    if accelerator.is_main_process:
        backbone = plain_resnet(plan.backbone_of(accelerator.unwrap_model(model)))
        backbone.update_training_info(
            method=config.method, dataset=data.name, epochs=config.epochs, train_samples=len(source),
            final_loss=round(progress.history[-1]["loss"], 6) if progress.history else None,
            stage="squeeze", config=config.result_fields(),
        )
        save_model_atomically(backbone, final)
        if config.push_to_hub:
            push_model_folder(final, config.push_to_hub, commit_message="hf-scdd squeeze backbone")
        accelerator.print(f"[squeeze] saved {final}")
    remove_checkpoints(accelerator, out)
    finish_trackers(accelerator)
    return final
