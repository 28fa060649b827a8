"""Squeeze benchmark: MoCo v2 vs random init vs supervised, each followed by the same linear probe.

    OMP_NUM_THREADS=2 python benchmarks/squeeze_probe.py [--epochs N --arch A --width W ...]

1. ``hf-scdd squeeze --method mocov2`` with the default config (SqueezeConfig defaults) -> probe;
2. a randomly initialised backbone of the same architecture -> the same probe (same budget);
3. ``hf-scdd squeeze --method supervised`` (the SRe²L control) -> probe;
4. ``hf-scdd inspect-bn`` of the SSL vs supervised backbones -> ``benchmarks/bn_stats/``.

Prints wall time and probe top-1 of each and writes ``benchmarks/artifacts/squeeze_results.json``. The trained
backbones stay in ``benchmarks/artifacts/squeeze_{mocov2,supervised}/backbone`` and the probed (recovery)
models in ``benchmarks/artifacts/probe_{mocov2,supervised}/model`` for the other benchmarks (fidelity, labels)
to reuse. ``benchmarks/artifacts/`` is not in git: this command (re)creates it, and a rerun skips what is
finished (each stage resumes its own output folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process): on a shared machine CPU seconds / threads is a
    load-independent estimate of the wall time an idle machine would take."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def squeezed_backbone(method: str, artifacts: Path = ARTIFACTS, overrides: dict | None = None) -> Path:
    """``benchmarks/artifacts/squeeze_<method>/backbone`` with this benchmark's config, trained if missing."""
    from hf_scdd.stages.squeeze import SqueezeConfig
    from hf_scdd.stages.squeeze import main as squeeze

    return squeeze(SqueezeConfig(output_dir=str(artifacts / f"squeeze_{method}"), method=method, **(overrides or {})))


def main() -> None:
    from hf_scdd.models.resnet import save_model_atomically
    from hf_scdd.stages.inspect_bn import InspectBNConfig
    from hf_scdd.stages.inspect_bn import main as inspect_bn
    from hf_scdd.stages.probe import ProbeConfig
    from hf_scdd.stages.probe import main as probe
    from hf_scdd.stages.squeeze import SqueezeConfig
    from hf_scdd.stages.squeeze import main as squeeze
    from hf_scdd.training.pretrain import new_backbone
    from hf_scdd.training.stage import load_stage_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", default="{}", help="JSON dict of SqueezeConfig overrides (both methods).")
    parser.add_argument("--probe_overrides", default="{}", help="JSON dict of ProbeConfig overrides.")
    parser.add_argument("--artifacts", default=str(ARTIFACTS))
    parser.add_argument("--bn_dir", default=str(HERE / "bn_stats"))
    parser.add_argument("--fresh", action="store_true", help="Delete earlier artifacts first.")
    args = parser.parse_args()
    overrides, probe_overrides = json.loads(args.overrides), json.loads(args.probe_overrides)
    artifacts = Path(args.artifacts)
    if args.fresh:
        for name in ("squeeze_mocov2", "squeeze_supervised", "probe_mocov2", "probe_supervised", "probe_random"):
            shutil.rmtree(artifacts / name, ignore_errors=True)
        shutil.rmtree(args.bn_dir, ignore_errors=True)

    import torch

    results: dict = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                     "load_avg_start": os.getloadavg(), "runs": {}}
    backbones = {}
    for method in ("mocov2", "supervised"):
        config = SqueezeConfig(output_dir=str(artifacts / f"squeeze_{method}"), method=method, **overrides)
        backbones[method], seconds, cpu = timed(squeeze, config)
        results["runs"][method] = {"squeeze_seconds": round(seconds, 1), "squeeze_cpu_seconds": round(cpu, 1),
                                   "squeeze_config": config.to_dict()}
        print(f"== squeeze {method}: {seconds:.1f} s wall, {cpu:.1f} s CPU")

    # The random-init control: same architecture, same data statistics, never trained.
    ref = SqueezeConfig(**overrides)
    random_dir = Path(tempfile.mkdtemp(prefix="random_backbone_"))
    random_backbone = new_backbone(ref, load_stage_data(ref), 0)
    random_backbone.update_training_info(method="random-init", epochs=0, dataset=ref.dataset)
    backbones["random"] = save_model_atomically(random_backbone, random_dir / "backbone")

    for name in ("mocov2", "random", "supervised"):
        out = artifacts / f"probe_{name}"
        config = ProbeConfig(output_dir=str(out), backbone=str(backbones[name]), **probe_overrides)
        _, seconds, cpu = timed(probe, config)
        top1 = json.loads((out / "probe_results.json").read_text())["probe_top1"]
        results["runs"].setdefault(name, {}).update(
            probe_seconds=round(seconds, 1), probe_cpu_seconds=round(cpu, 1), probe_top1=top1
        )
        print(f"== probe {name}: top-1 {100 * top1:.2f} % ({seconds:.1f} s wall, {cpu:.1f} s CPU)")
    shutil.rmtree(random_dir, ignore_errors=True)
    shutil.rmtree(artifacts / "probe_random", ignore_errors=True)

    report = inspect_bn(
        InspectBNConfig(output_dir=args.bn_dir, backbones=[str(backbones["mocov2"]), str(backbones["supervised"])],
                        labels=["mocov2 (SSL)", "supervised"])
    )
    results["bn_summary"] = {k: v["summary"] for k, v in report["models"].items()}
    results["load_avg_end"] = os.getloadavg()
    (artifacts / "squeeze_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "squeeze_config"} for k, v in results["runs"].items()},
                     indent=2))
    print(json.dumps(results["bn_summary"], indent=2))


if __name__ == "__main__":
    main()
