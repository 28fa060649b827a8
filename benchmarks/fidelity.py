"""The paper's claim, measured on the built-in Fashion-MNIST under ONE protocol.

SC-DD (recovered from a MoCo v2 backbone + eval-mode linear probe) vs SRe²L (recovered from a supervised backbone
of the same architecture, same recover settings) vs a random real subset with the same images per class, each
post-trained the same way with online KD (a supervised teacher, as SC-DD uses) and with hard labels; mean ± std
over student seeds, final-epoch top-1 on the full 10k test split, at IPC 10 and 50.

    python benchmarks/fidelity.py                       # uses the backbones in benchmarks/artifacts/
    python benchmarks/fidelity.py --ipcs 10 --seeds 0   # a quicker look

The IPC-10 sets are the first 10 IPC indices of the IPC-50 sets: recovery units are seeded by (seed, ipc, chunk)
only, so they are exactly the images an IPC-10 run produces. Recovery runs with ``--recover_processes``
processes (the images do not depend on it). Finished recoveries and student runs are reused on rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"

# The small-image post-training protocol (SC-DD's CIFAR recipe: pad-crop + flip, Mixup 0.8, T=30, AdamW 1e-3).
PROTOCOL = dict(crop="pad", crop_pad=4, flip=True, mix="mixup", mix_alpha=0.8, temperature=30.0, batch_size=64,
                lr=1e-3, weight_decay=0.01)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scdd_backbone", default=str(ARTIFACTS / "probe_mocov2" / "model"))
    p.add_argument("--sre2l_backbone", default=str(ARTIFACTS / "squeeze_supervised" / "backbone"))
    p.add_argument("--teacher", default=str(ARTIFACTS / "squeeze_supervised" / "backbone"))
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=["online", "hard"])
    p.add_argument("--iterations", type=int, default=None, help="recovery iterations (recover preset if unset)")
    p.add_argument("--epochs", type=int, default=30, help="post-training epochs")
    p.add_argument("--eval_every", type=int, default=0, help="score every N epochs (0 = only the final epoch)")
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--recover_processes", type=int, default=2)
    p.add_argument("--output_dir", default=str(HERE / "results" / "fidelity"))
    return p.parse_args()


def recover(backbone: str, ipc: int, out: Path, args: argparse.Namespace) -> Path:
    """One recovery run (resumable: finished units are skipped), launched with N CPU processes."""
    cmd = [sys.executable, "-m", "hf_scdd", "recover", "--backbone", backbone, "--ipc", str(ipc),
           "--output_dir", str(out), "--report_to", "none", "--group_size", "1"]
    if args.iterations:
        cmd += ["--iterations", str(args.iterations)]
    env = dict(os.environ)
    if args.recover_processes > 1:
        env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(args.recover_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
               "no", "--main_process_port", "29731", "-m", "hf_scdd"] + cmd[3:] + ["--cpu", "true"]
    subprocess.run(cmd, check=True, env=env)
    return out


def evaluate_set(name: str, distilled, ipc: int, args, data, teacher, random_baseline: bool) -> dict:
    from hf_scdd.stages.evaluate import EvaluateConfig, run_evaluation

    config = EvaluateConfig(
        output_dir=str(Path(args.output_dir) / f"eval_{name}_ipc{ipc}"), distilled=f"{name}-ipc{ipc}",
        label_modes=list(args.modes), seeds=list(args.seeds), epochs=args.epochs, arch=args.arch,
        width=args.width, random_baseline=random_baseline, save_student=False, report_to="none",
        eval_every=args.eval_every or args.epochs, **PROTOCOL,
    )
    return run_evaluation(config, data=data, distilled=distilled, teacher=teacher)


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"Fashion-MNIST, student {args.arch} (width {args.width}), {args.epochs} epochs, batch {PROTOCOL['batch_size']}, "
        f"AdamW {PROTOCOL['lr']}, pad-crop + flip + Mixup {PROTOCOL['mix_alpha']}, T={PROTOCOL['temperature']}; "
        f"final-epoch top-1 (%) on the 10k test split, mean ± std over seeds {' '.join(map(str, args.seeds))}.",
        "",
        "| IPC | labels | SC-DD (MoCo v2) | SRe²L (supervised) | random real | IOR SC-DD | IOR SRe²L |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fmt = lambda v: f"{100 * v[0]:.2f} ± {100 * v[1]:.2f}"  # noqa: E731
        lines.append(
            f"| {r['ipc']} | {r['mode']} | {fmt(r['scdd'])} | {fmt(r['sre2l'])} | {fmt(r['random'])} | "
            f"{100 * (r['scdd'][0] - r['random'][0]):+.2f} | {100 * (r['sre2l'][0] - r['random'][0]):+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from hf_scdd.data import load_image_dataset
    from hf_scdd.hub import load_distilled
    from hf_scdd.models import load_backbone

    args = parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    sets = {}
    for name, backbone in (("scdd", args.scdd_backbone), ("sre2l", args.sre2l_backbone)):
        start = time.time()
        folder = recover(backbone, max(args.ipcs), out / f"distilled_{name}", args)
        timings[f"recover_{name}_s"] = round(time.time() - start, 1)
        sets[name], _, _ = load_distilled(str(folder))
    data = load_image_dataset()
    teacher = load_backbone(args.teacher)
    rows = []
    for ipc in args.ipcs:
        reports = {}
        for name in ("scdd", "sre2l"):
            subset = sets[name].filter(lambda r: r["ipc_index"] < ipc)
            start = time.time()
            reports[name] = evaluate_set(name, subset, ipc, args, data, teacher, random_baseline=(name == "scdd"))
            timings[f"evaluate_{name}_ipc{ipc}_s"] = round(time.time() - start, 1)
        for mode in args.modes:
            pick = lambda rep, key: (rep["results"][key]["final_top1_mean"], rep["results"][key]["final_top1_std"])  # noqa: E731
            rows.append({"ipc": ipc, "mode": mode, "scdd": pick(reports["scdd"], f"distilled/{mode}"),
                         "sre2l": pick(reports["sre2l"], f"distilled/{mode}"),
                         "random": pick(reports["scdd"], f"random/{mode}")})
    table = markdown(rows, args)
    (out / "fidelity.json").write_text(json.dumps({"args": vars(args), "rows": rows, "timings": timings}, indent=2))
    (out / "fidelity.md").write_text(table)
    print(table)
    print("timings (s):", json.dumps(timings))


if __name__ == "__main__":
    main()
