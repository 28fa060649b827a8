"""Data sources: the in-memory and streaming implementations of one interface, and the choice between them.

Real parquet files, real ``datasets`` (map-style and ``streaming=True``), real DataLoader workers and a real
Accelerator. The stage-level tests (squeeze, probe, evaluate on streamed data) are in
``tests/test_streaming_stages.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_scdd.configs import ConfigError
from hf_scdd.data import load_image_dataset
from hf_scdd.data.sources import (
    IN_MEMORY_MAX_BYTES_ENV,
    DatasetSource,
    IterableSource,
    MemorySource,
    choose_data_source,
    rank_part,
)
from hf_scdd.data.tensors import channel_stats
from hf_scdd.errors import DataError

from helpers import write_sharded_parquet


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory) -> str:
    """128 train rows in two unequal shards (72 + 56), 32 test rows; 4 classes of 16x16 grey images."""
    return str(write_sharded_parquet(tmp_path_factory.mktemp("sharded")))


def _sources(folder: str):
    memory = load_image_dataset(folder, data_source="memory")
    stream = load_image_dataset(folder, data_source="stream", num_workers=2)
    return memory, stream


def test_the_choice_is_made_by_decoded_size_and_can_be_forced(monkeypatch):
    monkeypatch.setenv(IN_MEMORY_MAX_BYTES_ENV, str(100 * 3 * 32 * 32))
    assert choose_data_source("auto", streaming=False, rows=100, channels=3, image_size=32) == "memory"
    assert choose_data_source("auto", streaming=False, rows=101, channels=3, image_size=32) == "stream"
    assert choose_data_source("memory", streaming=False, rows=10**9, channels=3, image_size=224) == "memory"
    assert choose_data_source("stream", streaming=False, rows=1, channels=1, image_size=8) == "stream"
    assert choose_data_source("auto", streaming=True, rows=None, channels=1, image_size=8) == "stream"
    with pytest.raises(ConfigError, match="drop --streaming"):
        choose_data_source("memory", streaming=True, rows=None, channels=1, image_size=8)
    with pytest.raises(ConfigError, match="--data_source must be one of"):
        choose_data_source("disk", streaming=False, rows=1, channels=1, image_size=8)
    monkeypatch.setenv(IN_MEMORY_MAX_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match="number of bytes"):
        choose_data_source("auto", streaming=False, rows=1, channels=1, image_size=8)


def test_memory_and_stream_sources_give_the_same_batches_and_subsets(parquet_folder):
    memory, stream = _sources(parquet_folder)
    a, b = memory.source("train"), stream.source("train")
    assert isinstance(a, MemorySource) and isinstance(b, DatasetSource) and b.num_workers == 2
    assert len(a) == len(b) == 128 and torch.equal(a.labels(), b.labels())
    for rank in range(3):  # every rank's part, in order, the same rows from both
        parts = [list(source.batches(10, rank=rank, world_size=3)) for source in (a, b)]
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(*parts))
        assert sum(len(y) for _, y in parts[0]) == len(rank_part(128, rank, 3))
    sub_a, sub_b = a.subset(40, seed=3), b.subset(40, seed=3)
    assert len(sub_a) == 40 and torch.equal(torch.cat([x for x, _ in sub_a.batches(64)]),
                                            torch.cat([x for x, _ in sub_b.batches(64)]))
    assert not torch.equal(sub_a.labels(), a.subset(40, seed=4).labels())
    pools_a, pools_b = a.per_class_subsets(3, [0, 1], 4), b.per_class_subsets(3, [0, 1], 4)
    for seed in (0, 1):
        assert torch.equal(pools_a[seed][0], pools_b[seed][0])
        assert pools_a[seed][1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert not torch.equal(pools_a[0][0], pools_a[1][0])
    # the statistics: the same seeded sample, so the same values; and only from that sample
    assert memory.mean == stream.mean and memory.std == stream.std
    sampled = load_image_dataset(parquet_folder, data_source="stream")
    sampled.stats_samples = 20
    expected = channel_stats([x for x, _ in b.subset(20, seed=0, runs=100).batches(7)])
    assert sampled.mean == pytest.approx(expected[0]) and sampled.mean != stream.mean
    assert ("tensors", "train") not in sampled._cache  # nothing decoded but the sample


def test_training_loader_gives_both_sources_the_same_batches(parquet_folder, tmp_path):
    from hf_scdd.training.accelerator import make_accelerator
    from hf_scdd.training.loaders import training_loader

    memory, stream = _sources(parquet_folder)
    accelerator = make_accelerator(tmp_path, cpu=True, report_to="none")
    loaders = [training_loader(accelerator, data.source("train").subset(100, 0), 16, seed=5)
               for data in (memory, stream)]
    assert len(loaders[0]) == len(loaders[1]) == 100 // 16
    firsts = []
    for epoch in range(2):  # the seeded sampler reshuffles every epoch, identically for both
        epochs = [list(loader) for loader in loaders]
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(*epochs))
        firsts.append(epochs[0][0][0])
    assert not torch.equal(firsts[0], firsts[1])


def test_streamed_source_reads_every_row_once_and_chooses_seeded_subsets(parquet_folder):
    streamed = load_image_dataset(parquet_folder, streaming=True, num_workers=2)
    memory = load_image_dataset(parquet_folder, data_source="memory")
    source = streamed.source("train")
    assert isinstance(source, IterableSource) and streamed.source_kind == "stream"
    assert len(source) == 128 and len(streamed.source("test")) == 32
    with pytest.raises(DataError, match="no random access"):
        source.labels()
    # two workers over two shards, then two "processes": every row exactly once
    seen = torch.cat([x for x, _ in source.batches(16)])
    by_rank = torch.cat([x for r in range(2) for x, _ in source.batches(16, rank=r, world_size=2)])
    every = memory.tensors("train")[0]
    key = lambda images: sorted(map(bytes, images.flatten(1).numpy()))  # noqa: E731
    assert key(seen) == key(every) == key(by_rank)
    # a subset: the first N of the seeded shuffled stream, the same set on 1 or 3 processes
    subset = source.subset(30, seed=2)
    one = key(torch.cat([x for x, _ in subset.batches(8)]))
    three = key(torch.cat([x for r in range(3) for x, _ in subset.batches(8, rank=r, world_size=3)]))
    assert len(one) == 30 and one == three and one != key(torch.cat([x for x, _ in source.subset(30, 3).batches(8)]))
    # per-class subsets in one pass: balanced, seeded, and independent of the order rows arrive in
    pools = source.per_class_subsets(4, [0, 1], 4)
    assert pools[0][1].tolist() == [c for c in range(4) for _ in range(4)]
    assert key(pools[0][0]) != key(pools[1][0])
    shuffled = IterableSource(dataset=source.dataset.shuffle(seed=9, buffer_size=200), decoder=source.decoder,
                              num_rows=128)
    assert torch.equal(shuffled.per_class_subsets(4, [0], 4)[0][0], pools[0][0])
    with pytest.raises(DataError, match="fewer than the 40 requested"):
        source.per_class_subsets(40, [0], 4)


def test_stream_epochs_give_every_rank_the_same_number_of_steps(parquet_folder):
    """Shards of 72 and 56 rows on two 'ranks': each yields len // global batch batches, the short one by
    continuing from a fresh pass, and every epoch is reshuffled."""
    from types import SimpleNamespace

    from hf_scdd.training.loaders import StreamEpochs

    source = load_image_dataset(parquet_folder, streaming=True, num_workers=1).source("train")
    runs = {}
    for rank, epochs in ((0, 1), (1, 2)):
        fake = SimpleNamespace(device=torch.device("cpu"), process_index=rank, num_processes=2)
        loader = StreamEpochs(source, 30, seed=1, steps=128 // 60, accelerator=fake)
        runs[rank] = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            runs[rank].append(list(loader))
    assert [len(batches) for batches in runs[0] + runs[1]] == [2, 2, 2]
    assert all(x.shape == (30, 1, 16, 16) and x.dtype == torch.uint8 for b in runs[1] for x, _ in b)
    assert not torch.equal(runs[1][0][0][0], runs[1][1][0][0])  # epoch 1 is shuffled differently
    assert not torch.equal(runs[0][0][0][0], runs[1][0][0][0])  # the ranks read different shards


def test_streaming_refuses_what_needs_random_access(parquet_folder):
    with pytest.raises(ConfigError, match="drop --streaming"):
        load_image_dataset(parquet_folder, streaming=True, data_source="memory")
    streamed = load_image_dataset(parquet_folder, streaming=True)
    with pytest.raises(DataError, match="not decoded into tensors"):
        streamed.tensors("train")


def test_run_subsets_are_seeded_runs_of_consecutive_rows():
    from hf_scdd.data.tensors import run_subset

    picked = run_subset(1000, 100, seed=1, runs=10)
    assert len(picked) == 100 and len(set(picked.tolist())) == 100 and torch.equal(picked, picked.sort().values)
    assert int((picked[1:] - picked[:-1] != 1).sum()) <= 9  # ten runs: at most nine jumps
    assert torch.equal(picked, run_subset(1000, 100, seed=1, runs=10))
    assert not torch.equal(picked, run_subset(1000, 100, seed=2, runs=10))
    assert torch.equal(run_subset(50, 100, seed=1, runs=10), torch.arange(50))


def test_channel_stats_accumulate_like_one_pass():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (50, 3, 5, 5), dtype=np.uint8))
    mean, std = channel_stats([images[:7], images[7:30], images[30:]])
    x = images.float() / 255.0
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(x.std(dim=(0, 2, 3)).tolist(), abs=1e-6)
