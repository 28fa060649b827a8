"""Selecting real starting images per class: recovery that refines real images instead of noise.

SC-DD starts every synthetic image from N(0, 1) noise. The strongest lever measured on small data is to start
from real images of the class instead (SRe²L++ / EDC / RDED / DELT) and to *choose* them: a random draw of 10
images per class varies by several points of student top-1 from draw to draw, and a draw that covers the
class's modes trains better students than one that repeats its most typical image. The choices:

* ``random``: a seeded uniform draw (the random-real-subset baseline, refined or not);
* ``kmeans``: per class, k-means (cosine, k-means++ seeding) with k = IPC on an observer's pooled features,
  and the real image nearest each centroid (a medoid): coverage of the class's modes, largest cluster first;
* ``strata``: the same clusters, but a seeded random member of each (stratified sampling: coverage without
  the medoids' preference for the most typical image, which KD students need less than hard-label ones);
* ``strata_core``: the same clusters, a seeded random member of the half of each cluster nearest its centre:
  between the medoids (the most typical member, which hard-label students need) and ``strata`` (any member,
  whose variety KD students use), without a cluster's edge;
* ``herding``: greedy herding of the class mean in feature space (each pick brings the running mean closest
  to the class mean);
* ``confident``: the images the observer classifies most confidently (lowest cross-entropy): RDED's
  "most realistic" criterion, kept for comparison;
* ``kmeans_margin``: the same clusters, and in each the member nearest the class boundary (smallest margin
  between the observer's probability of the class and of its strongest rival) among the half of the cluster
  nearest its centre: coverage of the modes, and within each mode the image whose soft label says the most
  (Cluster-Margin-style active learning), without the outliers and label noise at a cluster's edge. Measured
  worse than the medoids on Fashion-MNIST at IPC 10 (61.02 hard / 86.89 KD vs 75.85 / 87.28, one seed): at
  10 images per class typical images teach more than ambiguous ones, even through a teacher's soft labels.
* ``kcenter``: robust greedy k-center (farthest-first traversal) on the observer's features: the class's most
  typical image first, then each pick the image farthest from every pick so far, among the class's images
  without the :data:`KCENTER_TRIM` least typical ones (the outliers and label noise plain k-center would take
  first). It covers a class's tails where the medoids cover its bulk: a KD student learns the teacher's
  function on whatever it is shown, so coverage of the rare styles may teach it more than typicality does.
* ``kmedoids``: k-medoids in cosine similarity: the ``k`` images that maximise ``sum_i max_s sim(i, s)``, the
  similarity of every image of the class to its nearest pick (the coverage k-means medoids only approximate: the
  image nearest a k-means centroid is not the best representative of its cluster). Greedy facility location
  (CRAIG-style, each pick adds the most coverage) starts it, Voronoi iteration (each pick moves to the medoid of
  the images nearest it) finishes it; deterministic, no seed.
Features come from the observer's ``forward_features`` (its pooled penultimate layer) when it has one, else
from its logits. A self-supervised observer's features group images by appearance rather than by the label
alone, which is what k-means needs to find the modes: on Fashion-MNIST at IPC 10 the SSL recovery model's
medoids trained students 6.6 points (hard labels) and 0.6 (KD) better than the supervised teacher's
(benchmarks/RESULTS.md, sweep rows kmeans vs kmeans_teacher). Every draw
is seeded by ``(seed, class)``, so the selection is the same on any process count and on reruns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensors import normalize
from ..errors import ConfigError
from ..models.adapters import model_logits
from ..training.accelerator import Precision, autocast_of

SELECTIONS = (
    "random", "kmeans", "strata", "strata_core", "herding", "confident", "kmeans_margin", "kcenter", "kmedoids",
)
SELECTION_FEATURES = ("observer", "joint", "logits")
"""What the selection clusters: the observer's pooled features, the recovery model's and the observer's side by
side (``joint``, :meth:`hf_scdd.models.ensemble.ObserverEnsemble.forward_features`), or the observer's centred
logits (``logits``, :class:`hf_scdd.models.ensemble.LogitView`: the shapes of its soft labels)."""
KCENTER_TRIM = 0.1
CACHED_SIMILARITIES = 1 << 26
"""The most pairwise similarities (float32, 256 MiB) ``kmedoids`` keeps in memory; a larger class recomputes them."""
"""The fraction of a class's candidates, least similar to the class's mean feature, that ``kcenter`` never takes."""


def class_seed(seed: int, label: int) -> int:
    """A well-mixed seed that depends on ``(seed, label)`` only."""
    state = np.random.SeedSequence([seed, 7_919, label]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


@torch.no_grad()
def observer_outputs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    features: bool,
    precision: Precision | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """float32 pooled features (``features``; logits for models without ``forward_features``) or logits of
    uint8 ``images``, normalised with the model's own statistics, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    forward = getattr(model, "forward_features", None) if features else None
    outputs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device), model.mean, model.std)
        with autocast_of(precision):
            out = forward(x) if forward is not None else model(x)
        outputs.append(model_logits(out).float().cpu())
    return torch.cat(outputs)


def cosine_kmeans(
    features: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine k-means with k-means++ seeding: ``(unit-norm points, centres [k, D], assignment [N])``."""
    x = F.normalize(features.double(), dim=1)
    n = len(x)
    centres = [x[int(torch.randint(n, (1,), generator=generator))]]
    distance = (2 - 2 * x @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        pick = int(torch.multinomial(distance.float() + 1e-12, 1, generator=generator))
        centres.append(x[pick])
        distance = torch.minimum(distance, (2 - 2 * x @ x[pick]).clamp_min(0))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = (x @ c.T).argmax(dim=1)
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = F.normalize(x[members].mean(dim=0), dim=0)
    return x, c, (x @ c.T).argmax(dim=1)


def kmeans_medoids(features: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the ``k`` points nearest the centroids of a cosine k-means, one per centroid and all
    distinct, ordered by cluster size (largest first)."""
    x, centres, assign = cosine_kmeans(features, k, generator)
    similarity = x @ centres.T
    chosen: list[int] = []
    for j in _largest_first(assign, k):
        chosen.append(next(i for i in similarity[:, j].argsort(descending=True).tolist() if i not in chosen))
    return torch.tensor(chosen, dtype=torch.long)


def kmeans_strata(features: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """One seeded random member of each of the ``k`` clusters (stratified sampling): the clusters' coverage
    of the class's modes without the medoids' preference for the most typical image (an empty cluster gives
    the unchosen point nearest its centre)."""

    def random_member(members: list[int], x: torch.Tensor, centre: torch.Tensor) -> int:
        return members[int(torch.randint(len(members), (1,), generator=generator))]

    return _member_per_cluster(features, k, generator, random_member)


def kmeans_strata_core(features: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """One seeded random member of the inner half (nearest the centre) of each of the ``k`` clusters."""

    def random_inner_member(members: list[int], x: torch.Tensor, centre: torch.Tensor) -> int:
        inner = _inner_half(members, x, centre)
        return inner[int(torch.randint(len(inner), (1,), generator=generator))]

    return _member_per_cluster(features, k, generator, random_inner_member)


def _inner_half(members: list[int], x: torch.Tensor, centre: torch.Tensor) -> list[int]:
    """The half of a cluster's members nearest its centre (at least one), nearest first."""
    by_distance = sorted(members, key=lambda i: -float(x[i] @ centre))
    return by_distance[: max(1, (len(by_distance) + 1) // 2)]


def kmeans_margin(features: torch.Tensor, margins: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """In each of the ``k`` clusters, the member with the smallest ``margins`` among the half of the cluster
    nearest its centre (at least one member; an empty cluster gives the unchosen point nearest its centre)."""

    def most_ambiguous_inner(members: list[int], x: torch.Tensor, centre: torch.Tensor) -> int:
        return min(_inner_half(members, x, centre), key=lambda i: (float(margins[i]), i))

    return _member_per_cluster(features, k, generator, most_ambiguous_inner)


def _member_per_cluster(
    features: torch.Tensor,
    k: int,
    generator: torch.Generator,
    choose: Callable[[list[int], torch.Tensor, torch.Tensor], int],
) -> torch.Tensor:
    """One point per cluster of a cosine k-means, largest cluster first: ``choose(unchosen members, unit-norm
    points, centre)``, or the unchosen point nearest the centre for a cluster with no unchosen member."""
    x, centres, assign = cosine_kmeans(features, k, generator)
    chosen: list[int] = []
    for j in _largest_first(assign, k):
        members = [i for i in torch.nonzero(assign == j).flatten().tolist() if i not in chosen]
        if members:
            chosen.append(choose(members, x, centres[j]))
        else:
            nearest = (x @ centres[j]).argsort(descending=True).tolist()
            chosen.append(next(i for i in nearest if i not in chosen))
    return torch.tensor(chosen, dtype=torch.long)


def class_margins(logits: torch.Tensor, label: int) -> torch.Tensor:
    """``p(label) − max_{c≠label} p(c)`` per row of ``logits``: negative where the observer prefers a rival."""
    probs = logits.float().softmax(dim=1)
    rivals = probs.clone()
    rivals[:, label] = -1.0
    return probs[:, label] - rivals.max(dim=1).values


def _largest_first(assign: torch.Tensor, k: int) -> list[int]:
    sizes = torch.bincount(assign, minlength=k)
    return sorted(range(k), key=lambda j: (-int(sizes[j]), j))


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding: each pick makes the mean of the picks so far closest to the class mean."""
    x = F.normalize(features.double(), dim=1)
    target, total, chosen = x.mean(dim=0), torch.zeros_like(x[0]), []
    for t in range(1, k + 1):
        gap = ((total + x) / t - target).norm(dim=1)
        if chosen:
            gap[torch.tensor(chosen)] = float("inf")
        pick = int(gap.argmin())
        chosen.append(pick)
        total += x[pick]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter(features: torch.Tensor, k: int, trim: float = KCENTER_TRIM) -> torch.Tensor:
    """Greedy k-center in cosine distance: the point nearest the mean first, then farthest-first, over the
    points left after dropping the ``trim`` fraction least similar to the mean (at least ``k`` are kept)."""
    x = F.normalize(features.double(), dim=1)
    typicality = x @ F.normalize(x.mean(dim=0), dim=0)
    keep = typicality.argsort(descending=True, stable=True)[: max(k, len(x) - int(trim * len(x)))]
    chosen = [int(keep[0])]
    distance = (1 - x[keep] @ x[chosen[0]]).clamp_min(0)
    for _ in range(1, k):
        pick = int(keep[int(distance.argmax())])
        chosen.append(pick)
        distance = torch.minimum(distance, (1 - x[keep] @ x[pick]).clamp_min(0))
    return torch.tensor(chosen, dtype=torch.long)


def kmedoids(features: torch.Tensor, k: int, rounds: int = 20, block: int = 2048) -> torch.Tensor:
    """Indices of ``k`` distinct points that (locally) maximise the summed cosine similarity of every point to its
    nearest pick: greedy facility location, then Voronoi iteration until no pick moves (at most ``rounds``); each
    step of either never lowers that coverage."""
    x = F.normalize(features.float(), dim=1)
    picks = greedy_facility_location(x, k, block)
    for _ in range(rounds):
        moved = voronoi_medoids(x, picks)
        if torch.equal(moved, picks):
            break
        picks = moved
    return picks


def greedy_facility_location(
    x: torch.Tensor, k: int, block: int = 2048, cache_limit: int = CACHED_SIMILARITIES
) -> torch.Tensor:
    """``k`` picks among unit-norm ``x``, each the one that most raises ``sum_i max_s (1 + x_i · x_s)`` (the shift
    makes every gain non-negative). The [N, N] similarities are formed once, in row blocks, when they fit in
    ``cache_limit`` entries, else again at every pick, so memory stays bounded for any class size."""
    starts = range(0, len(x), block)
    cached = [1 + x[i : i + block] @ x.T for i in starts] if len(x) ** 2 <= cache_limit else None
    covered = torch.zeros(len(x))
    chosen: list[int] = []
    for _ in range(k):
        gains = torch.zeros(len(x))
        for b, i in enumerate(starts):
            similarity = cached[b] if cached is not None else 1 + x[i : i + block] @ x.T
            gains += (similarity - covered[i : i + block, None]).clamp_min(0).sum(dim=0)
        gains[chosen] = -1.0
        chosen.append(int(gains.argmax()))
        covered = torch.maximum(covered, 1 + x @ x[chosen[-1]])
    return torch.tensor(chosen, dtype=torch.long)


def voronoi_medoids(x: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Each pick replaced by the medoid of its Voronoi cell (the member most similar, summed, to the cell's
    members), in the same order; a pick already a medoid stays, so a fixed point returns ``picks`` unchanged.
    Duplicate images can leave a pick outside its own cell: such a pick stays, and a move that would give two
    picks the same image is not made."""
    cell = (x @ x[picks].T).argmax(dim=1)
    moved = picks.clone()
    for j, pick in enumerate(picks.tolist()):
        members = torch.nonzero(cell == j).flatten()
        if pick not in members.tolist():
            continue
        scores = (x[members] @ x[members].T).sum(dim=0)
        if float(scores.max()) > float(scores[members == pick][0]) + 1e-6:
            moved[j] = members[int(scores.argmax())]
    return moved if len(set(moved.tolist())) == len(moved) else picks


def select_real_images(
    observer: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    ipc: int,
    how: str,
    seed: int,
    pool: int = 0,
    precision: Precision | None = None,
) -> torch.Tensor:
    """``[K, IPC]`` indices into ``images`` (uint8 [N, C, H, W]): IPC real images of every class chosen by
    ``how`` (see the module docstring) among a seeded pool of ``pool`` candidates per class (0 = all)."""
    if how not in SELECTIONS:
        raise ConfigError(f"--selection must be one of {SELECTIONS}, got {how!r}")
    if how != "random" and observer is None:
        raise ConfigError(f"--selection {how} needs an observer model (the recovery model or --selection_model)")
    chosen = []
    for label in range(num_classes):
        candidates = torch.nonzero(labels == label).flatten()
        if len(candidates) < ipc:
            raise ConfigError(
                f"class {label} has {len(candidates)} training images, fewer than --ipc {ipc}: real-image "
                "initialisation needs at least IPC images per class (use --init noise, or a smaller --ipc)"
            )
        generator = torch.Generator().manual_seed(class_seed(seed, label))
        candidates = candidates[torch.randperm(len(candidates), generator=generator)]
        if pool:
            candidates = candidates[: max(pool, ipc)]
        chosen.append(candidates[_pick(observer, images[candidates], label, ipc, how, generator, precision)])
    return torch.stack(chosen)


def _pick(
    observer: nn.Module | None,
    candidates: torch.Tensor,
    label: int,
    ipc: int,
    how: str,
    generator: torch.Generator,
    precision: Precision | None,
) -> torch.Tensor:
    """Positions (into ``candidates``, already in seeded random order) of the IPC chosen ones."""
    if how == "random":
        return torch.arange(ipc)
    if how == "confident":
        logits = observer_outputs(observer, candidates, features=False, precision=precision)
        loss = F.cross_entropy(logits, torch.full((len(logits),), label), reduction="none")
        return loss.argsort(stable=True)[:ipc]
    features = observer_outputs(observer, candidates, features=True, precision=precision)
    if how == "kmeans_margin":
        logits = observer_outputs(observer, candidates, features=False, precision=precision)
        return kmeans_margin(features, class_margins(logits, label), ipc, generator)
    if how == "herding":
        return herding(features, ipc)
    if how == "kcenter":
        return kcenter(features, ipc)
    if how == "kmedoids":
        return kmedoids(features, ipc)
    by_clusters = {"kmeans": kmeans_medoids, "strata": kmeans_strata, "strata_core": kmeans_strata_core}
    return by_clusters[how](features, ipc, generator)
