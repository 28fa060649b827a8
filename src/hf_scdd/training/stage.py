"""The start-up every training stage (squeeze, probe) shares: validation, precision, config check, data.

A stage starts in two steps, so that a run refused for its inputs leaves nothing behind that would lock the
folder: :func:`start_stage` validates the config, resolves device and precision, compares the config with the
one recorded in the output folder (without writing) and says whether the stage's final model already exists;
the stage then loads and checks its inputs (:func:`load_stage_data`), and :func:`begin_work` records the config
and the data source it reads through (memory or stream), and builds the accelerator (trackers, checkpoints) as
the work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configs import StageConfig, check_config, record_config, record_runtime
from ..data.loading import ImageData, load_image_dataset
from ..utils import use_cpu
from .accelerator import Precision, check_compile, make_accelerator


@dataclass
class StageStart:
    """What :func:`start_stage` hands a training stage: the process state (device, process count), the
    resolved precision, and whether the final model already exists (nothing to do)."""

    state: Any
    precision: Precision
    finished: bool


def start_stage(config: StageConfig, run_name: str, final: Path) -> StageStart:
    """Validate ``config``, resolve its precision and compare it with the output folder's record (refusing a
    different one); writes nothing."""
    from accelerate import PartialState

    config.validate()
    state = PartialState(cpu=use_cpu(config.cpu))  # the CPU decision make_accelerator will make
    precision = Precision.resolve(config.mixed_precision, state.device)
    if getattr(config, "compile", False):
        check_compile(state.device)
    check_config(config, config.output_dir)
    finished = (final / "model.safetensors").exists()
    if finished and state.is_main_process:
        record_config(config, config.output_dir, runtime={"precision": precision.name})  # runtime info only
        print(f"[{run_name}] {final} already exists for this config; nothing to do", flush=True)
    return StageStart(state, precision, finished)


def begin_work(config: StageConfig, run_name: str, precision: Precision, data: ImageData | None = None):
    """Record the config (main process), and the data source ``data`` reads through, and build the stage's
    accelerator: from here on the folder holds this run's work, which a rerun of the same command resumes."""
    out = Path(config.output_dir)
    accelerator = make_accelerator(out, cpu=config.cpu, report_to=config.report_to, run_name=run_name,
                                   config=config.to_dict())
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        record_config(config, out, runtime={"precision": precision.name})
    accelerator.wait_for_everyone()
    if data is not None and accelerator.is_main_process:
        record_runtime(out, {"data_source": data.source_kind})
    return accelerator


def load_stage_data(config: StageConfig, **options: Any) -> ImageData:
    """The dataset a stage's config names, with its column, split, size and data-source settings; ``options``
    go to :func:`~hf_scdd.data.loading.load_image_dataset` (e.g. ``channels`` of the backbone) and win."""
    settings = dict(image_column=config.image_column, label_column=config.label_column,
                    train_split=config.train_split, test_split=config.test_split, image_size=config.image_size,
                    streaming=config.streaming, data_source=config.data_source, num_workers=config.num_workers)
    return load_image_dataset(config.dataset, **{**settings, **options})
