"""``hf-scdd <stage> [--config file.yaml] [--field value ...]``: each stage's ``main(config)``.

Single process: ``hf-scdd recover ...``. Several processes: ``accelerate launch -m hf_scdd recover ...``
(on CPU: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m hf_scdd recover ...``).
Stage modules are imported only once a stage is chosen, and nothing here imports torch, so ``hf-scdd --help``
and usage errors are instant.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Sequence

# stage -> (module, config class, one-line description); every module has ``main(config)``
STAGES: dict[str, tuple[str, str, str]] = {
    "squeeze": ("hf_scdd.stages.squeeze", "SqueezeConfig", "pre-train a backbone (MoCo v2 or supervised)"),
    "probe": ("hf_scdd.stages.probe", "ProbeConfig", "fit a linear probe on a frozen, eval-mode backbone"),
    "inspect-bn": ("hf_scdd.stages.inspect_bn", "InspectBNConfig", "compare BN running statistics of backbones"),
    "recover": ("hf_scdd.stages.recover", "RecoverConfig", "synthesise a distilled set by BN matching"),
    "relabel": ("hf_scdd.stages.relabel", "RelabelConfig", "store teacher soft labels as safetensors"),
    "evaluate": ("hf_scdd.stages.evaluate", "EvaluateConfig", "post-train a student and report top-1"),
    "pipeline": ("hf_scdd.pipeline", "PipelineConfig", "run every stage end to end"),
}


def usage() -> str:
    """The top-level help: every stage with its one-line description."""
    lines = ["usage: hf-scdd <stage> [--config file.yaml] [--field value ...]", "", "stages:"]
    lines += [f"  {name:<11} {desc}" for name, (_, _, desc) in STAGES.items()]
    lines += ["", "`hf-scdd <stage> --help` lists every field of a stage."]
    return "\n".join(lines)


def configure_logging() -> None:
    """hf_scdd's own progress at INFO; libraries at WARNING, without their progress bars (once per run)."""
    from .utils import quiet_libraries

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("hf_scdd").setLevel(logging.INFO)
    quiet_libraries()


def main(argv: Sequence[str] | None = None) -> None:
    """``hf-scdd [<stage> [--config file.yaml] [--field value ...]]``; the stage module is imported only here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.exit(f"hf-scdd: unknown stage {stage!r}\n\n{usage()}")
    from .configs import parse_config

    module_name, config_name, _ = STAGES[stage]
    module = importlib.import_module(module_name)
    config = parse_config(getattr(module, config_name), rest, prog=f"hf-scdd {stage}")
    configure_logging()
    module.main(config)


if __name__ == "__main__":
    main()
