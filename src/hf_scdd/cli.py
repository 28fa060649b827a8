"""``hf-scdd <stage> [--config file.yaml] [--field value ...]``: each stage's ``main(config)``.

Single process: ``hf-scdd recover ...``. Several processes: ``accelerate launch -m hf_scdd recover ...``
(on CPU: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m hf_scdd recover ...``).
Stage modules are imported only once a stage is chosen, and nothing here imports torch, so ``hf-scdd --help``
and usage errors are instant.

An hf_scdd error (:class:`~hf_scdd.errors.HfScddError`) is printed as ONE line, ``hf-scdd <stage>: error:
<problem, file, fix>``, and the process exits with the error's code (2 for usage errors, 1 otherwise);
``HF_SCDD_DEBUG=1`` shows the traceback instead. Other exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, Callable, Sequence

from .errors import HfScddError

DEBUG_ENV = "HF_SCDD_DEBUG"
"""Set to 1 to see the traceback of an hf_scdd error instead of its one-line message."""

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


def run_command(prog: str, config_cls: type, stage_main: Callable[[Any], Any], argv: Sequence[str] | None) -> Any:
    """Parse ``argv`` into ``config_cls`` and run ``stage_main`` on it, reporting an hf_scdd error as one line
    on stderr and exiting with its code (the traceback only with ``HF_SCDD_DEBUG=1``)."""
    from .configs import parse_config

    try:
        config = parse_config(config_cls, argv, prog=prog)
        configure_logging()
        return stage_main(config)
    except HfScddError as err:
        if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
            raise
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    """``hf-scdd [<stage> [--config file.yaml] [--field value ...]]``; the stage module is imported only here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.exit(f"hf-scdd: unknown stage {stage!r}\n\n{usage()}")
    module_name, config_name, _ = STAGES[stage]
    module = importlib.import_module(module_name)
    run_command(f"hf-scdd {stage}", getattr(module, config_name), module.main, rest)


if __name__ == "__main__":
    main()
