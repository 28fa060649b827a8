"""``hf-scdd probe``: a linear classifier on a frozen, eval-mode backbone: SC-DD's recovery model.

The backbone's weights and BN running statistics stay exactly those of pre-training (checked bit for bit
after probing); only a linear ``fc`` is fitted, on features of the un-augmented training images, standardised
and folded back (:mod:`hf_scdd.training.linear_probe`). The output, ``output_dir/model``, is a Hub-ready
:class:`~hf_scdd.models.ResNet` whose card reports the probe's top-1 on the test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configs import Check, ConfigError, StageConfig, discard_on_failure, in_range
from ..data.sources import in_memory_max_bytes
from ..data.tensors import normalize
from ..errors import SqueezeError
from ..hub.push import push_model_folder
from ..models.loading import MODEL_DIR, load_backbone
from ..models.resnet import ResNet, plain_resnet, save_model_atomically
from ..training.accelerator import finish_trackers
from ..training.evaluation import evaluate_top1, extract_features
from ..training.linear_probe import SCALINGS, calibrate_head, fit_linear_probe
from ..training.loop import CHECKPOINT_DIR, remove_checkpoints
from ..training.stage import begin_work, load_stage_data, start_stage
from ..utils import atomic_write_text


@dataclass
class ProbeConfig(StageConfig):
    """``hf-scdd probe``: a linear classifier on a frozen, eval-mode backbone (BN statistics untouched)."""

    output_dir: str = field(default="outputs/probe", metadata={"help": "Folder the stage writes to."})
    backbone: str | None = field(
        default=None, metadata={"help": "Backbone folder (or a squeeze output_dir) or Hub repo id."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --backbone."})
    epochs: int = field(default=20, metadata={"help": "Probe epochs over the cached features."})
    batch_size: int = field(default=256, metadata={"help": "Probe batch size (global)."})
    lr: float = field(default=0.5, metadata={"help": "Peak SGD learning rate (standardised features)."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (MoCo's probe uses 0)."})
    standardize: str = field(
        default="global",
        metadata={"help": "Feature scaling for the optimiser, folded into fc: 'global' (one RMS scalar), 'feature' "
                  "(per-feature standardisation: large weights on low-variance directions) or 'none'."},
    )
    calibrate: bool = field(
        default=True,
        metadata={"help": "Fit one logit scale (temperature) on held-out training features and fold it into fc, "
                  "so recovery's cross-entropy does not saturate at once."},
    )
    calibration_fraction: float = field(
        default=0.1, metadata={"help": "Share of the probe's training images held out for the calibration."}
    )
    max_train_samples: int = field(
        default=10000,
        metadata={"help": "Seeded subset of training images for the probe (0 = all; with --streaming the first "
                  "N of the seeded shuffled stream). Their features are held in memory."},
    )
    feature_batch_size: int = field(default=1024, metadata={"help": "Batch size of feature extraction."})

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            (bool(self.backbone), "probe needs --backbone (a backbone folder, a squeeze output_dir or a Hub repo id)"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1 and self.feature_batch_size >= 1, "--batch_size and --feature_batch_size must be >= 1"),
            in_range("lr", self.lr, 0, 100, low_open=True, note="the probe's default is 0.5"),
            in_range("momentum", self.momentum, 0, 1),
            in_range("weight_decay", self.weight_decay, 0, 1),
            (self.standardize in SCALINGS, f"--standardize must be one of {list(SCALINGS)}, got {self.standardize!r}"),
            (0 < self.calibration_fraction < 0.5,
             f"--calibration_fraction must be in (0, 0.5), got {self.calibration_fraction}"),
            (self.max_train_samples >= 0, f"--max_train_samples must be >= 0 (0 = all), got {self.max_train_samples}"),
        ]


def check_feature_budget(num_images: int, num_features: int) -> None:
    """The probe holds one fp32 feature vector per training image: refuse more than the in-memory budget."""
    needed = num_images * num_features * 4
    if needed > in_memory_max_bytes():
        raise ConfigError(
            f"the probe's features of {num_images} images would take {needed / 2**30:.1f} GiB, over the in-memory "
            f"budget of {in_memory_max_bytes() / 2**30:.1f} GiB ($HF_SCDD_IN_MEMORY_MAX_BYTES): pass a smaller "
            "--max_train_samples"
        )


def main(config: ProbeConfig) -> Path:
    """Fit a linear probe on a frozen eval-mode backbone; returns ``output_dir/model`` (backbone + probe)."""
    from accelerate.utils import set_seed

    out = Path(config.output_dir)
    final = out / MODEL_DIR
    start = start_stage(config, "probe", final)
    if start.finished:
        return final
    precision = start.precision
    backbone = load_backbone(config.backbone, revision=config.revision)  # a squeeze output folder works too
    if not isinstance(backbone, ResNet):
        raise SqueezeError(
            f"probe needs an hf_scdd ResNet backbone; {config.backbone!r} is a {type(backbone).__name__}: pass it "
            "to recover directly if it has a classifier, or import it with hf_scdd.models.import_checkpoint"
        )
    data = load_stage_data(config, channels=backbone.in_channels)  # grey data for an RGB backbone: converted
    source = data.source("train").subset(config.max_train_samples, config.seed)
    check_feature_budget(len(source), backbone.num_features)

    accelerator = begin_work(config, "probe", precision, data)
    backbone = backbone.to(accelerator.device)
    backbone.requires_grad_(False)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, backbone.mean, backbone.std)

    set_seed(config.seed)
    with discard_on_failure(out, CHECKPOINT_DIR, "logs"):
        feats, targets = extract_features(
            accelerator, backbone, source, preprocess, config.feature_batch_size, precision=precision
        )
        held_out = int(round(config.calibration_fraction * len(feats))) if config.calibrate else 0
        weight, bias = fit_linear_probe(
            accelerator, feats[held_out:], targets[held_out:], data.num_classes, epochs=config.epochs,
            batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, standardize=config.standardize, seed=config.seed, output_dir=out,
            precision=precision,
        )
        scale = 1.0
        if held_out:
            weight, bias, scale = calibrate_head(weight, bias, feats[:held_out], targets[:held_out])
    backbone.reset_classifier(data.num_classes, data.class_names)
    backbone.fc.weight.data.copy_(weight)
    backbone.fc.bias.data.copy_(bias)
    backbone.to(accelerator.device).eval()
    if not all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items()):
        # a guard, not an expected path: the probe must never alter the pre-trained model
        raise SqueezeError("the backbone changed during probing; this is a bug in hf_scdd")
    top1 = evaluate_top1(accelerator, backbone, data.source("test"), preprocess, precision=precision)
    if accelerator.is_main_process:
        info = {"probe_top1": round(top1, 6), "probe_epochs": config.epochs, "probe_logit_scale": round(scale, 6),
                "probe_head_norm": round(float(weight.norm()), 4)}
        backbone.update_training_info(
            **info, probe_dataset=data.name, probe_config=config.result_fields(),
            base_model=config.backbone if not Path(config.backbone).exists() else None,
        )
        backbone.update_training_info(dataset=backbone.training_info.get("dataset") or data.name)
        save_model_atomically(plain_resnet(backbone), final)
        atomic_write_text(out / "probe_results.json", json.dumps({**info, "backbone": config.backbone}, indent=2) + "\n")
        if config.push_to_hub:
            push_model_folder(final, config.push_to_hub, commit_message="hf-scdd probe recovery model")
        accelerator.print(f"[probe] linear-probe top-1 {100 * top1:.2f} % on {data.name} test; saved {final}")
    remove_checkpoints(accelerator, out)
    finish_trackers(accelerator)
    return final
