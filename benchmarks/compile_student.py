"""What ``--compile`` buys a whole post-training run: wall time and top-1 of the same students, eager and compiled.

    python benchmarks/compile_student.py                                   # Fashion-MNIST hf_scdd IPC 10, fp32 + bf16
    python benchmarks/compile_student.py --dataset cifar10 --precisions bf16

``benchmarks/train_speed.py`` times single training steps; this times what a user waits for: one ``hf-scdd
evaluate`` (the library's protocol, its default 3000 steps, hard labels and online KD, one student seed, no
baselines) on a fidelity set, once eager and once with ``--compile true``, each a separate single-threaded
process, one after the other, so the compiled run's wall time includes its compilation (each run gets an empty
inductor cache, so it is a first run's cost). Needs the fidelity benchmark's models and set (``python
benchmarks/fidelity.py --dataset <name> --part sets --rows hf_scdd``). Prints one row per precision: seconds
eager and compiled, their ratio, and the students' top-1 (compiled kernels round differently, so the figures may
differ in the last digits, not in substance). Results also go to ``benchmarks/results/compile_student.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from common import HERE, benchmark_setup, evaluate_command, hardware_line, read_results, run_all


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "cifar10"))
    p.add_argument("--set", default="hf_scdd-ipc10", help="a set folder under results/fidelity/<dataset>/sets")
    p.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def timed_evaluation(args, setup, models: Path, work: Path, precision: str, compile_model: bool) -> dict:
    """One evaluate run in a fresh folder; its wall seconds and top-1 per label mode."""
    name = f"{precision}-{'compiled' if compile_model else 'eager'}"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    # a fresh, empty inductor cache per run: the compiled run's wall time is a first run's, compile included
    cache = work / "inductor_cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    command = evaluate_command(setup, Path(args.root) / "fidelity" / args.dataset / "sets" / args.set, out,
                               models / "teacher", modes=["hard", "online"], seeds=[0], steps=args.steps,
                               random_baseline=False, mixed_precision=precision, compile=str(compile_model).lower())
    start = time.time()
    run_all([(name, command)], work / "logs", workers=1)
    seconds = time.time() - start
    results = read_results(out)["results"]
    return {"seconds": seconds, **{key: 100 * value["final_top1_mean"] for key, value in results.items()}}


def main() -> None:
    args = parse_args()
    setup, models = benchmark_setup(args.dataset, args.root)
    work = Path(args.root) / "compile_student" / args.dataset
    hardware = hardware_line()
    print(f"[compile_student] {hardware}", flush=True)
    rows = {}
    for precision in args.precisions:
        rows[precision] = {mode: timed_evaluation(args, setup, models, work, precision, mode == "compiled")
                           for mode in ("eager", "compiled")}
    print(f"\n{args.dataset} {args.set}, {args.steps} steps, hard + KD students (seed 0), 1 thread; {hardware}\n")
    print("| precision | eager s | compiled s (compile included) | speed-up | top-1 hard / KD eager | compiled |")
    print("|---|---:|---:|---:|---|---|")
    for precision, row in rows.items():
        eager, compiled = row["eager"], row["compiled"]
        print(f"| {precision} | {eager['seconds']:.0f} | {compiled['seconds']:.0f} | "
              f"{eager['seconds'] / compiled['seconds']:.2f}× | {eager['distilled/hard']:.2f} / "
              f"{eager['distilled/online']:.2f} | {compiled['distilled/hard']:.2f} / {compiled['distilled/online']:.2f} |")
    payload = {"date": time.strftime("%Y-%m-%d"), "hardware": hardware, "args": vars(args), "rows": rows}
    (Path(args.root) / "compile_student.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
