"""Memory benchmark: peak RSS of every stage on a small and a large dataset, in separate processes.

    OMP_NUM_THREADS=1 python benchmarks/memory.py                      # 20k and 80k rows, --data_source stream
    OMP_NUM_THREADS=1 python benchmarks/memory.py --streaming          # the same data with load_dataset(streaming=True)
    OMP_NUM_THREADS=1 python benchmarks/memory.py --sizes 2000 8000    # a quick check

Generates (once, under ``benchmarks/artifacts/memory/``, not in git) parquet datasets of 64×64 RGB images in
the Hub layout, 10 classes, ``--sizes`` training rows in shards of 2,000 and the same 1,000 test rows for every
size, then runs ``hf-scdd squeeze`` (MoCo v2), ``probe``, the supervised teacher (``squeeze --method
supervised``), ``recover`` (``--method hf_scdd``: real starting images chosen from a pool of 200 per class and
BN targets measured on 1,000 training images), ``relabel`` and ``evaluate`` (online KD, random-subset baseline) on each size,
every stage in its own process with its own ``HF_HOME``. The work per stage is the same at every size (tiny
models, a fixed number of steps and training images), so whatever grows with the dataset is memory the
stage holds for the data. For each stage it prints the peak RSS of its process tree's largest process
(``ru_maxrss`` from ``wait4``: the stage or one of its DataLoader workers), the peak anonymous memory
(RssAnon + RssShmem, sampled) of its largest process, which leaves out file-backed pages such as those of the
memory-mapped Arrow table, and the ratios large/small; a
ratio above ``--max_ratio`` (1.10) fails the run. Children run with allocators that return freed memory
(:data:`MALLOC_ENV`: fixed glibc thresholds, Arrow on glibc; ``--fixed_malloc 0`` to drop them) so that peaks
are reproducible and measure what a stage holds. ``--data_source memory`` shows the in-memory path instead,
whose peak grows with the decoded split. Results go to ``benchmarks/results/memory*.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "artifacts" / "memory"
RESULTS = HERE / "results"
SHARD_ROWS = 2000
TEST_ROWS = 1000
NUM_CLASSES = 10
SIDE = 64

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576",
              "ARROW_DEFAULT_MEMORY_POOL": "system"}
"""Allocators that return what is freed, so that a peak measures what a stage holds. glibc's mmap threshold is
dynamic (it rises to the largest freed block), so the heap a process keeps after freeing depends on the order
of allocations across threads: identical runs differed by ±10 % in peak RSS; a fixed threshold makes blocks of
1 MiB and more come from (and return to) mmap, and peaks reproducible to 0.3 %. Arrow's default pool
(mimalloc) keeps freed pages for reuse: Arrow allocates through glibc instead. A variable already set in the
environment wins (``ARROW_DEFAULT_MEMORY_POOL=mimalloc python benchmarks/memory.py`` measures with it)."""

COMMON = ["--cpu", "true", "--mixed_precision", "no", "--report_to", "none", "--seed", "0"]
TINY_NET = ["--arch", "resnet10", "--width", "8"]
TRAIN = ["--epochs", "1", "--batch_size", "128", "--max_train_samples", "2048"]


def stage_commands(data: Path, out: Path) -> dict[str, list[str]]:
    """The stages in pipeline order, each a ``python -m hf_scdd`` command line (minus the data flags)."""
    return {
        "squeeze": ["squeeze", "--output_dir", str(out / "squeeze"), *TINY_NET, *TRAIN, "--moco_k", "1024"],
        "probe": ["probe", "--output_dir", str(out / "probe"), "--backbone", str(out / "squeeze"),
                  "--max_train_samples", "2048", "--epochs", "2", "--feature_batch_size", "256"],
        "teacher": ["squeeze", "--output_dir", str(out / "teacher"), "--method", "supervised", *TINY_NET, *TRAIN],
        "recover": ["recover", "--output_dir", str(out / "distilled"), "--backbone", str(out / "probe"),
                    "--ipc", "2", "--iterations", "20", "--method", "hf_scdd", "--selection_pool", "200",
                    "--bn_target_samples", "1000"],
        "relabel": ["relabel", "--output_dir", str(out / "relabel"), "--distilled", str(out / "distilled"),
                    "--teacher", str(out / "teacher"), "--epochs", "2", "--batch_size", "16"],
        "evaluate": ["evaluate", "--output_dir", str(out / "evaluate"), "--distilled", str(out / "distilled"),
                     "--teacher", str(out / "teacher"), "--label_modes", "online", *TINY_NET, "--steps", "40",
                     "--batch_size", "16", "--eval_points", "1", "--eval_batch_size", "256", "--seeds", "0"],
    }


def generate(folder: Path, rows: int) -> Path:
    """A parquet dataset of ``rows`` 64×64 RGB training images (+ the shared test rows), written shard by shard."""
    import datasets
    import numpy as np
    from PIL import Image

    if (folder / "DONE").exists():
        return folder
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class{c}" for c in range(NUM_CLASSES)])})
    (folder / "data").mkdir(parents=True, exist_ok=True)
    grid = np.linspace(0.0, 1.0, SIDE)[None, :, None]

    def shard(name: str, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        images, labels = [], []
        for i in range(count):
            label = int(rng.integers(NUM_CLASSES))
            tint = np.array([(label * 37) % 255, (label * 91) % 255, (label * 53) % 255], dtype=np.float64)
            pixels = tint * (0.5 + 0.5 * grid) + rng.normal(0, 25, (SIDE, SIDE, 3))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(label)
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            str(folder / "data" / name))

    shards = -(-rows // SHARD_ROWS)
    for s in range(shards):
        shard(f"train-{s:05d}-of-{shards:05d}.parquet", min(SHARD_ROWS, rows - s * SHARD_ROWS), seed=1000 + s)
    shard("test-00000-of-00001.parquet", TEST_ROWS, seed=7)
    (folder / "DONE").write_text(str(rows))
    return folder


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (DataLoader workers), from /proc."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for child in children for p in _tree(int(child))]


def _anon_mib(pid: int) -> float:
    """Anonymous resident memory of one process (RssAnon + RssShmem), MiB; 0 once it has gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return 0.0
    return sum(int(fields.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssShmem")) / 1024


def run_stage(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """Run one stage in a child process; ``(peak RSS in MiB of its largest process, peak anonymous memory in MiB
    of its largest process (sampled every 20 ms), wall seconds)``.

    ``ru_maxrss`` also counts file-backed pages: the shared libraries, and the pages of memory-mapped Arrow
    tables a process has read (page cache, not memory the stage holds); the anonymous peak leaves them out.
    """
    start, anon = time.perf_counter(), 0.0
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hf_scdd", *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            anon = max([anon] + [_anon_mib(p) for p in _tree(proc.pid)])
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return usage.ru_maxrss / 1024, anon, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def cpu_description() -> dict[str, object]:
    """The CPU model and which of the bf16/AVX flags it has (``/proc/cpuinfo``)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model": model, "cores": os.cpu_count(), **{f: f in flags for f in ("amx_bf16", "avx512_bf16", "avx2")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 80_000], help="Small and large row counts.")
    parser.add_argument("--data_source", default="stream", help="auto, memory or stream (every stage).")
    parser.add_argument("--streaming", action="store_true", help="Load with load_dataset(..., streaming=True).")
    parser.add_argument("--num_workers", type=int, default=1, help="DataLoader workers per stage.")
    parser.add_argument("--max_ratio", type=float, default=1.10, help="Largest allowed peak-RSS ratio large/small.")
    parser.add_argument("--fixed_malloc", type=int, default=1,
                        help="1: allocators that return freed memory (reproducible peaks; see MALLOC_ENV), 0: defaults.")
    args = parser.parse_args()

    mode = "streaming" if args.streaming else args.data_source
    peaks: dict[str, dict[str, float]] = {}
    anon_peaks: dict[str, dict[str, float]] = {}
    for rows in args.sizes:
        data = generate(WORK / f"data_{rows}", rows)
        out = WORK / f"run_{mode}_{rows}"
        env = {**os.environ, "HF_HOME": str(WORK / "hf_home"), "HF_SCDD_CACHE": str(out / "cache"),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               **({k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()} if args.fixed_malloc else {})}
        flags = ["--dataset", str(data), "--data_source", "stream" if args.streaming else args.data_source,
                 "--streaming", str(args.streaming).lower(), "--num_workers", str(args.num_workers)]
        shutil.rmtree(out, ignore_errors=True)  # a finished stage would skip its work
        out.mkdir(parents=True)
        for stage, argv in stage_commands(data, out).items():
            mib, anon, wall = run_stage([*argv, *COMMON, *flags], env, out / f"{stage}.log")
            peaks.setdefault(stage, {})[str(rows)] = mib
            anon_peaks.setdefault(stage, {})[str(rows)] = anon
            print(f"{rows:>7} rows  {stage:<9} peak RSS {mib:8.1f} MiB  anonymous {anon:8.1f} MiB  ({wall:5.1f} s)",
                  flush=True)

    small, large = (str(r) for r in args.sizes)
    print(f"\n| stage | peak RSS, {small} rows (MiB) | {large} rows (MiB) | ratio | anonymous peak, {small} rows | "
          f"{large} rows | ratio |\n|---|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for stage, by_size in peaks.items():
        ratios[stage] = by_size[large] / by_size[small]
        anon = anon_peaks[stage]
        print(f"| {stage} | {by_size[small]:.0f} | {by_size[large]:.0f} | {ratios[stage]:.3f} | {anon[small]:.0f} | "
              f"{anon[large]:.0f} | {anon[large] / anon[small]:.3f} |")
    allocators = {k: os.environ.get(k, v) for k, v in MALLOC_ENV.items()} if args.fixed_malloc else {}
    report = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(),
              "mode": mode, "allocator_env": allocators, "sizes": args.sizes, "peak_rss_mib": peaks, "ratios": ratios,
              "peak_anonymous_mib": anon_peaks}
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if allocators.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system" else "_" + allocators["ARROW_DEFAULT_MEMORY_POOL"]
    (RESULTS / f"memory_{mode}{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    worst = max(ratios.values())
    if worst > args.max_ratio:
        raise SystemExit(f"peak memory grew by {100 * (worst - 1):.1f} % (> {100 * (args.max_ratio - 1):.0f} %)")
    print(f"\nflat: the largest ratio is {worst:.3f} (<= {args.max_ratio})")


if __name__ == "__main__":
    main()
