"""The start-up every training stage (squeeze, probe) shares: accelerator, precision, config check, data.

:func:`start_stage` builds the stage's accelerator, resolves its precision, checks its config against the
output folder (recording the resolved precision as runtime information), says whether the stage's final
model already exists, in which case there is nothing to do, and otherwise loads the stage's dataset and
records which data source (memory or stream) it reads through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs import StageConfig, check_or_write_config, record_runtime
from ..data.loading import ImageData, load_image_dataset
from .accelerator import Precision, finish_trackers, make_accelerator


@dataclass
class StageStart:
    """What :func:`start_stage` hands a training stage."""

    accelerator: Any
    precision: Precision
    finished: bool
    data: ImageData | None = None


def start_stage(config: StageConfig, run_name: str, final: Path) -> StageStart:
    """The accelerator and precision of a training stage, its config checked against the output folder, and
    whether the stage's final model (``final/model.safetensors``) already exists; when it does not, the
    stage's data too."""
    out = Path(config.output_dir)
    accelerator = make_accelerator(
        out, cpu=config.cpu, report_to=config.report_to, run_name=run_name, config=config.to_dict(),
    )
    precision = Precision.resolve(config.mixed_precision, accelerator.device)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_or_write_config(config, out, runtime={"precision": precision.name})
    accelerator.wait_for_everyone()
    finished = (final / "model.safetensors").exists()
    if finished:
        accelerator.print(f"[{run_name}] {final} already exists for this config; nothing to do")
        finish_trackers(accelerator)
        return StageStart(accelerator, precision, finished)
    data = load_stage_data(config)
    record_data_source(accelerator, out, data)
    return StageStart(accelerator, precision, finished, data)


def load_stage_data(config: StageConfig) -> ImageData:
    """The dataset a stage's config names, with its column overrides and data-source choice."""
    return load_image_dataset(
        config.dataset, image_column=config.image_column, label_column=config.label_column,
        image_size=config.image_size, streaming=config.streaming, data_source=config.data_source, num_workers=config.num_workers,
    )


def record_data_source(state, folder: Path, data: ImageData) -> None:
    """Record the data source ``data`` resolves to (``memory``/``stream``) in the stage's ``config.json``."""
    if state.is_main_process:
        record_runtime(folder, {"data_source": data.source_kind})
    state.wait_for_everyone()
