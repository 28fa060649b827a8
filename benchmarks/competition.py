"""Teacher-student competition on a set's real images (Adaptive DeepInversion's term, DELT/EDC-style KD-specific
content): does moving the images towards where a KD student disagrees with its teacher train better KD students?

    python benchmarks/competition.py --dataset cifar10 --ipc 50 --r_adv 0 0.1 1 --seeds 0

Issue 11's last untried idea. Selecting real images has not separated from a random subset with KD at IPC 50, so
this changes what the images show instead. Three steps, each resumable:

1. a proxy student: ``evaluate`` with KD on ``--base`` (a fidelity set, default the SSL medoids ``hf_scdd``) at
   ``--proxy_seed``, a seed no table uses, saved;
2. per ``--r_adv``: the base images refined for ``--steps`` Adam steps (SC-DD's betas, cosine lr, roll jitter and
   flip as in recovery) on ``ce · CE(teacher) + r_bn · BN(teacher's running statistics) − r_adv · JS(teacher,
   student)`` at temperature T; ``r_adv 0`` is the same refinement without the competition term (the control);
   with ``--selection`` (default) also a set of unchanged real images: per class, in each cluster of the
   teacher's features, the member where the proxy student disagrees most with the teacher (``js_selection``);
3. KD students on every new set, under the fidelity protocol, at ``--seeds``.

The table sets each refined set beside the base set's and the random subset's students of the same seeds from
``benchmarks/fidelity.py`` (``results/fidelity/<dataset>/evaluate``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from common import HERE, evaluate_command, hardware_line, read_results, run_all, start_benchmark, write_report
from fidelity import runs_by_seed

from hf_scdd.augment.recovery import apply_recovery_augmentation, sample_recovery_plan
from hf_scdd.data.loading import load_image_dataset
from hf_scdd.data.tensors import denormalize, normalize
from hf_scdd.formats.distilled_set import DATA_DIR, distilled_images, write_grid, write_shard
from hf_scdd.hub.loading import load_distilled
from hf_scdd.losses.bn_matching import BNStatsRecorder
from hf_scdd.models.ensemble import renormalisation
from hf_scdd.models.loading import load_backbone
from hf_scdd.synthesis.engine import ADAM_BETAS
from hf_scdd.synthesis.selection import class_seed, kmeans_margin, observer_outputs
from hf_scdd.training.accelerator import Precision, autocast_of
from hf_scdd.utils import atomic_write_text


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--base", default="hf_scdd",
                   help="fidelity row whose set is refined (results/fidelity/<dataset>/sets)")
    p.add_argument("--r_adv", type=float, nargs="+", default=[0.0, 0.1, 1.0],
                   help="competition weights (0: the control, the same refinement without the term)")
    p.add_argument("--ce", type=float, default=1.0,
                   help="weight of the teacher's cross-entropy on the image's class")
    p.add_argument("--r_bn", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--jitter", type=int, default=4)
    p.add_argument("--proxy_seed", type=int, default=99)
    p.add_argument("--selection", action=argparse.BooleanOptionalAction, default=True,
                   help="also the real images of each teacher-feature cluster where the proxy disagrees most")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--table_only", action="store_true",
                   help="train nothing: the table of the finished students of --seeds (n says how many)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence of two temperature-softened distributions (ADI's competition term)."""
    p, q = (F.softmax(z.float() / temperature, dim=1) for z in (p_logits, q_logits))
    log_m = (0.5 * (p + q)).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(log_m, p, reduction="none").sum(1) + F.kl_div(log_m, q, reduction="none").sum(1))


def refine(images: torch.Tensor, labels: torch.Tensor, teacher, student, args,
           r_adv: float) -> tuple[torch.Tensor, dict]:
    """The images [G, K, C, H, W] (uint8, one per class per group) after the competition refinement, and the
    last step's mean CE, BN, JS and teacher-student agreement."""
    groups = images.shape[0]
    x0 = normalize(images.flatten(0, 1), teacher.mean, teacher.std).view(images.shape)
    x = x0.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    size = tuple(images.shape[-2:])
    shifts = [sample_recovery_plan(generator, args.steps, size, jitter=args.jitter).shifts for _ in range(groups)]
    flips = torch.rand(args.steps, generator=generator) < 0.5
    scale, shift = renormalisation(teacher.mean, teacher.std, student.mean, student.std)
    mean, std = (torch.tensor(v).view(1, 1, -1, 1, 1) for v in (teacher.mean, teacher.std))
    low, high = -mean / std, (1 - mean) / std
    optimizer = torch.optim.Adam([x], lr=args.lr, betas=ADAM_BETAS)
    precision, y = Precision.resolve("auto", "cpu"), labels.flatten()
    with BNStatsRecorder(teacher, groups=groups) as recorder:
        for step in range(args.steps):
            optimizer.param_groups[0]["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            view = apply_recovery_augmentation(x, step, shifts)
            view = view.flip(3) if flips[step] else view
            with autocast_of(precision):
                t_logits, s_logits = teacher(view), student(view * scale + shift)
            ce = F.cross_entropy(t_logits.float(), y)
            bn = recorder.bn_loss(y).mean()
            js = js_divergence(t_logits, s_logits, args.temperature).mean()
            loss = args.ce * ce + args.r_bn * bn - r_adv * js
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(min=low, max=high)
        recorder.clear()
    agree = float((t_logits.argmax(1) == s_logits.argmax(1)).float().mean())
    change = float((x.detach() - x0).abs().mean())
    ce, bn, js = (float(v.detach()) for v in (ce, bn, js))
    stats = {"ce": ce, "bn": bn, "js": js, "agreement": agree, "mean_abs_change": change}
    pixels = (denormalize(x.detach().flatten(0, 1), teacher.mean, teacher.std) * 255).round().to(torch.uint8)
    return pixels.view_as(images), stats


REFINEMENT_FIELDS = ("base", "ce", "r_bn", "lr", "steps", "temperature", "jitter", "proxy_seed")
"""The arguments a set depends on (besides its competition weight), recorded in its config.json."""


def set_record(args: argparse.Namespace, **extra) -> dict:
    """What a set was made from: compared with a finished set's config.json before it is reused."""
    return {**{k: getattr(args, k) for k in REFINEMENT_FIELDS}, **extra}


def finished_set(out: Path, record: dict) -> bool:
    """Whether ``out`` holds the set of ``record``; one line and exit when it holds another config's."""
    if not out.is_dir():
        return False
    found = json.loads((out / "config.json").read_text())["made_from"]
    if found != record:
        raise SystemExit(f"{out} was made from {found}, not {record}: remove it, or pass another --root")
    return True


def write_set_folder(base: Path, out: Path, images: torch.Tensor, labels: torch.Tensor, ipc_index: list[int],
                     class_names: list[str], record: dict, report: dict) -> None:
    """A distilled-set folder (the base set's card, one shard, config.json), written whole or not at all."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / DATA_DIR).mkdir(parents=True)
    shutil.copy(base / "README.md", tmp / "README.md")
    write_shard(tmp / DATA_DIR / "train-00000-of-00001.parquet", images, labels.tolist(), ipc_index,
                [0] * len(labels), class_names)
    payload = {"made_from": record, "report": report, "hardware": hardware_line()}
    atomic_write_text(tmp / "config.json", json.dumps(payload, indent=2))
    tmp.rename(out)
    print(f"  {out.name}: {report}", flush=True)


def read_set(folder: Path):
    """A distilled-set folder's table, uint8 images [N, C, S, S] and labels [N] (channels and side from its
    first image)."""
    dataset, _, _ = load_distilled(folder)
    first = dataset[0]["image"]
    images, labels = distilled_images(dataset, len(first.getbands()), first.size[0])
    return dataset, images, labels


def write_refined_set(base: Path, out: Path, teacher, student, args, record: dict) -> None:
    """The base set refined at ``record["r_adv"]`` (images in the base set's order)."""
    dataset, images, labels = read_set(base)
    ipc_index, classes = torch.tensor(dataset["ipc_index"]), int(labels.max()) + 1
    order = torch.argsort(ipc_index * classes + labels)  # groups of one image per class, as recovery makes them
    grouped = images[order].view(-1, classes, *images.shape[1:])
    refined, stats = refine(grouped, labels[order].view(-1, classes), teacher, student, args, record["r_adv"])
    restored = torch.empty_like(images)
    restored[order] = refined.flatten(0, 1)
    write_set_folder(base, out, restored, labels, dataset["ipc_index"], dataset.features["label"].names, record,
                     {"last_step": stats})


def write_disagreement_selection(base: Path, out: Path, dataset: str, teacher, student, args, record: dict) -> None:
    """The other way to show a student where it disagrees with its teacher, with real images only: per class,
    a cosine k-means (IPC clusters) of the teacher's features and, in each cluster, the member of its inner
    half with the largest JS(teacher, proxy student) (``kmeans_margin``'s rule, with −JS as the margin)."""
    data = load_image_dataset(dataset)
    source = data.source("train")
    images, labels = source.indexed_images(), torch.as_tensor(source.labels())
    precision = Precision.resolve("auto", "cpu")
    features = observer_outputs(teacher, images, features=True, precision=precision)
    js = js_divergence(observer_outputs(teacher, images, features=False, precision=precision),
                       observer_outputs(student, images, features=False, precision=precision), args.temperature)
    chosen = []
    for label in range(data.num_classes):
        generator = torch.Generator().manual_seed(class_seed(0, label))
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[kmeans_margin(features[members], -js[members], args.ipc, generator)])
    picked = torch.stack(chosen).flatten()
    write_set_folder(base, out, images[picked], labels[picked], [j for _ in chosen for j in range(args.ipc)],
                     data.class_names, record, {"mean_js": float(js.mean()), "chosen_js": float(js[picked].mean())})


def write_comparison(path: Path, folders: list[Path], per_set: int = 4) -> None:
    """One PNG, a row per class: the first ``per_set`` images of each set side by side, in ``folders`` order."""
    images, labels, columns = [], [], []
    for position, folder in enumerate(folders):
        dataset, pixels, classes = read_set(folder)
        ipcs = dataset["ipc_index"]
        keep = [i for i, ipc in enumerate(ipcs) if ipc < per_set]
        images.append(pixels[keep])
        labels += classes[keep].tolist()
        columns += [position * per_set + ipcs[i] for i in keep]
    write_grid(path, torch.cat(images), labels, columns, max_columns=per_set * len(folders))


def kd_top1(runs: dict[str, dict[int, dict]], key: str, seeds: list[int]) -> list[float]:
    """Top-1 (%) of ``key``'s runs at ``seeds`` (those that exist)."""
    return [100 * runs[key][s]["final_top1"] for s in seeds if s in runs.get(key, {})]


def summary(values: list[float]) -> str:
    """``mean ± std (n = N)`` of top-1 figures, or – when there are none."""
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread} (n = {len(values)})"


def main() -> None:
    args = parse_args()
    setup, models, work = start_benchmark("competition", args)
    fidelity_work = Path(args.root) / "fidelity" / args.dataset
    base = fidelity_work / "sets" / f"{args.base}-ipc{args.ipc}"
    if not (base / DATA_DIR).is_dir():
        raise SystemExit(f"{base} is missing: run python benchmarks/fidelity.py --dataset {args.dataset} --part sets "
                         f"--rows {args.base} --ipcs {args.ipc} first")
    proxy = work / f"proxy-seed{args.proxy_seed}"
    if not (proxy / "results.json").exists():
        run_all([(proxy.name, evaluate_command(setup, base, proxy, models / "teacher", modes=["online"],
                                               seeds=[args.proxy_seed], steps=3000, random_baseline=False,
                                               save_student=True))], work / "logs", workers=1)
    teacher, student = load_backbone(str(models / "teacher")), load_backbone(str(proxy / "student"))
    for model in (teacher, student):
        model.requires_grad_(False)
    names = []
    for r_adv in args.r_adv:
        names.append(f"adv{r_adv:g}-ce{args.ce:g}-lr{args.lr:g}-steps{args.steps}")
        record = set_record(args, r_adv=r_adv)
        if not finished_set(work / "sets" / names[-1], record):
            write_refined_set(base, work / "sets" / names[-1], teacher, student, args, record)
    if args.selection:
        names.append("js_selection")
        record = set_record(args, selection="kmeans_margin on teacher features, margin = -JS(teacher, proxy)")
        if not finished_set(work / "sets" / names[-1], record):
            write_disagreement_selection(base, work / "sets" / names[-1], setup.dataset, teacher, student, args,
                                         record)
    evaluation = {(name, s): work / "evaluate" / f"{name}-seed{s}" for name in names for s in args.seeds}
    commands = [(f"evaluate_{folder.name}", evaluate_command(
        setup, work / "sets" / name, folder, models / "teacher", modes=["online"], seeds=[s], steps=3000,
        random_baseline=False)) for (name, s), folder in evaluation.items() if not (folder / "results.json").exists()]
    if not args.table_only:
        run_all(commands, work / "logs", workers=args.workers)
    write_comparison(work.parent / f"{work.name}.png", [base, *(work / "sets" / name for name in names)])
    runs = runs_by_seed(fidelity_work, args.base, args.ipc, "")[1]
    rows = {"random real subset (fidelity)": kd_top1(runs, "random/online", args.seeds),
            f"`{args.base}` as it is (fidelity)": kd_top1(runs, "distilled/online", args.seeds)}
    for name in names:
        rows[f"`{name}`"] = [100 * read_results(evaluation[name, s])["results"]["distilled/online"]["final_top1_mean"]
                             for s in args.seeds if (evaluation[name, s] / "results.json").exists()]
    proxy_top1 = 100 * read_results(proxy)["results"]["distilled/online"]["final_top1_mean"]
    lines = [f"# Competition refinement, {args.dataset} IPC {args.ipc} (KD students, final top-1 %)", "",
             f"Images (`{work.name}.png`): four per class of each set, left to right: `{args.base}`, "
             + ", ".join(f"`{name}`" for name in names) + ".", "",
             f"Machine: {hardware_line()}. Proxy student: seed {args.proxy_seed} on `{args.base}`, {proxy_top1:.2f} %.",
             "", "| set | KD top-1 | seeds asked |", "|---|---:|---|",
             *(f"| {row} | {summary(values)} | {args.seeds} |" for row, values in rows.items())]
    write_report(work, "\n".join(lines) + "\n", {"hardware": hardware_line(), "proxy_top1": proxy_top1,
                                                  "args": {k: v for k, v in vars(args).items() if k != "root"},
                                                  "kd_top1": rows})


if __name__ == "__main__":
    main()
