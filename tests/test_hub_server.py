"""Round trips of the real huggingface_hub / datasets clients against the fake Hub (tests/hub_server.py).

``tests/conftest.py`` has already pointed ``HF_ENDPOINT`` at the session's fake hub before these imports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset
from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    HfApi,
    ModelCard,
    ModelCardData,
    PyTorchModelHubMixin,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file

from hub_server import FakeHub

NAMES = ["cat", "dog", "bird"]


class TinyNet(torch.nn.Module, PyTorchModelHubMixin, library_name="hf_scdd"):
    def __init__(self, width: int = 4, num_classes: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _tiny_dataset(n: int = 6, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES), "idx": Value("int32")})
    return Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)], "idx": list(range(n))},
                             features=features)


def _rows(ds) -> list[tuple]:
    return [(int(r["idx"]), int(r["label"]), np.asarray(r["image"]).tobytes()) for r in ds]


def test_env_points_at_fake_hub(fake_hub):
    from huggingface_hub import constants

    assert constants.ENDPOINT == fake_hub.url == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_OFFLINE
    assert fake_hub.url.startswith("http://127.0.0.1:")
    assert HfApi().whoami()["name"] == "tester"


def test_network_guard_blocks_non_loopback():
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("8.8.8.8", 53), timeout=1)


def test_mixin_push_and_from_pretrained_bit_identical(hub_repo_id):
    torch.manual_seed(0)
    model = TinyNet(width=5)
    model.bn.running_mean.uniform_()  # non-default buffers must survive too
    model.push_to_hub(hub_repo_id)
    loaded = TinyNet.from_pretrained(hub_repo_id)
    assert loaded.conv.out_channels == 5
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    files = set(HfApi().list_repo_files(hub_repo_id))
    assert {"config.json", "model.safetensors", "README.md"} <= files


def test_dataset_push_load_and_stale_shard_cleanup(hub_repo_id, fake_hub):
    ds = _tiny_dataset()
    DatasetDict({"train": ds}).push_to_hub(hub_repo_id, num_shards={"train": 3})
    files = HfApi().list_repo_files(hub_repo_id, repo_type="dataset")
    assert sorted(f for f in files if f.startswith("data/")) == [
        f"data/train-0000{i}-of-00003.parquet" for i in range(3)]

    loaded = load_dataset(hub_repo_id, split="train")
    assert loaded.features["label"].names == NAMES
    assert sorted(_rows(loaded)) == sorted(_rows(ds))

    smaller = _tiny_dataset(n=4, seed=1)
    DatasetDict({"train": smaller}).push_to_hub(hub_repo_id)  # one shard: the 3 old ones must go
    files = HfApi().list_repo_files(hub_repo_id, repo_type="dataset")
    assert sorted(f for f in files if f.startswith("data/")) == ["data/train-00000-of-00001.parquet"]
    reloaded = load_dataset(hub_repo_id, split="train")
    assert sorted(_rows(reloaded)) == sorted(_rows(smaller))
    assert not any("xet" in path for _, path, _ in fake_hub.log)


def _write_sharded_folder(root: Path) -> tuple[Dataset, dict[str, torch.Tensor]]:
    from datasets.info import DatasetInfo, DatasetInfosDict

    ds = _tiny_dataset(n=8, seed=2)
    (root / "data").mkdir(parents=True)
    for rank in range(2):
        ds.shard(2, rank, contiguous=True).to_parquet(root / f"data/train-{rank:05d}-of-00002.parquet")
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    card_data = DatasetCardData(license="mit", configs=configs)
    DatasetInfosDict({"default": DatasetInfo(features=ds.features)}).to_dataset_card_data(card_data)
    DatasetCard.from_template(card_data, pretty_name="tiny distilled").save(root / "README.md")
    labels = {"soft_labels": torch.randn(2, 8, 3, dtype=torch.float16)}
    (root / "soft_labels").mkdir()
    save_file(labels, root / "soft_labels/epoch_0000.safetensors", metadata={"format": "pt"})
    return ds, labels


def test_upload_folder_snapshot_and_load(hub_repo_id, tmp_path):
    api = HfApi()
    ds, labels = _write_sharded_folder(tmp_path / "out")
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path / "out", repo_type="dataset")

    expected = {".gitattributes", "README.md", "data/train-00000-of-00002.parquet",
                "data/train-00001-of-00002.parquet", "soft_labels/epoch_0000.safetensors"}
    assert set(api.list_repo_files(hub_repo_id, repo_type="dataset")) == expected

    path = Path(snapshot_download(hub_repo_id, repo_type="dataset"))
    assert {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} == expected
    info = api.repo_info(hub_repo_id, repo_type="dataset")
    assert path.name == info.sha  # the snapshot is the revision repo_info reports
    for name in expected - {".gitattributes"}:
        assert (path / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name

    for source in (str(path), hub_repo_id):
        loaded = load_dataset(source, split="train")
        assert loaded.features["label"].names == NAMES
        assert sorted(_rows(loaded)) == sorted(_rows(ds))

    one = hf_hub_download(hub_repo_id, "soft_labels/epoch_0000.safetensors", repo_type="dataset")
    assert torch.equal(load_file(one)["soft_labels"], labels["soft_labels"])
    tree = {f.path: f for f in api.list_repo_tree(hub_repo_id, repo_type="dataset", recursive=True)}
    assert tree["data/train-00000-of-00002.parquet"].lfs is not None  # parquet always goes through LFS
    assert tree["README.md"].lfs is None


def test_cards_push_and_load(hub_repo_id):
    HfApi().create_repo(hub_repo_id)  # card.push_to_hub does not create the repo (same on the real Hub)
    card = ModelCard.from_template(ModelCardData(license="mit", library_name="hf_scdd"), model_id="tiny")
    card.push_to_hub(hub_repo_id)
    assert ModelCard.load(hub_repo_id).data.license == "mit"

    HfApi().create_repo(hub_repo_id, repo_type="dataset")
    dcard = DatasetCard.from_template(DatasetCardData(license="apache-2.0", tags=["sc-dd"]), pretty_name="x")
    dcard.push_to_hub(hub_repo_id, repo_type="dataset")
    loaded = DatasetCard.load(hub_repo_id, repo_type="dataset")
    assert loaded.data.tags == ["sc-dd"] and loaded.text == dcard.text


def test_revisions_branches_and_parent_commit(hub_repo_id, fake_hub):
    api = HfApi()
    api.create_repo(hub_repo_id)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id=hub_repo_id)
    api.create_branch(hub_repo_id, branch="dev")
    api.create_branch(hub_repo_id, branch="dev", exist_ok=True)
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=hub_repo_id, revision="dev")
    api.create_tag(hub_repo_id, tag="v1.0", revision=first.oid)

    assert Path(hf_hub_download(hub_repo_id, "a.txt")).read_bytes() == b"v1"
    assert Path(hf_hub_download(hub_repo_id, "a.txt", revision="dev")).read_bytes() == b"v2"
    assert Path(hf_hub_download(hub_repo_id, "a.txt", revision="v1.0")).read_bytes() == b"v1"
    refs = api.list_repo_refs(hub_repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1.0"]
    assert [c.title for c in api.list_repo_commits(hub_repo_id, revision="dev")][-1] == "initial commit"

    with pytest.raises(HfHubHTTPError) as err:  # stale parent: 412 Precondition Failed
        api.create_commit(hub_repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="stale",
                          parent_commit=api.list_repo_commits(hub_repo_id)[-1].commit_id)
    assert err.value.response.status_code == 412

    pr = api.create_commit(hub_repo_id, [CommitOperationAdd("c.txt", b"c")], commit_message="pr",
                           create_pr=True)
    assert pr.pr_revision == "refs/pr/1"
    assert Path(hf_hub_download(hub_repo_id, "c.txt", revision=pr.pr_revision)).read_bytes() == b"c"
    assert fake_hub.files(hub_repo_id)["a.txt"] == b"v1"


def test_errors_and_range_requests(hub_repo_id, fake_hub):
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="dir/x.bin", repo_id=hub_repo_id,
                    repo_type="dataset")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "missing.txt", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("tester/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(hub_repo_id, repo_type="dataset", revision="nope")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(hub_repo_id, "nodir", repo_type="dataset"))
    assert api.file_exists(hub_repo_id, "dir/x.bin", repo_type="dataset")
    assert not api.file_exists(hub_repo_id, "dir/y.bin", repo_type="dataset")
    [info] = api.get_paths_info(hub_repo_id, ["dir/x.bin", "nope"], repo_type="dataset", expand=True)
    assert info.lfs.size == 10 and info.last_commit is not None

    url = f"{fake_hub.url}/datasets/{hub_repo_id}/resolve/main/dir/x.bin"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=2-4"})) as r:
        assert r.status == 206 and r.read() == b"234" and r.headers["Content-Range"] == "bytes 2-4/10"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.headers["X-Repo-Commit"] == api.repo_info(hub_repo_id, repo_type="dataset").sha
        assert r.headers["X-Linked-Size"] == "10" and r.read() == b""
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=20-"}))
    assert err.value.code == 416


def test_cli_server_with_hub_env_in_subprocess(hub_env):
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hub_server.py")), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        script = textwrap.dedent("""
            import json, sys
            from huggingface_hub import HfApi, hf_hub_download
            api = HfApi()
            api.create_repo("tester/sub")
            api.upload_file(path_or_fileobj=b"hello", path_in_repo="w.bin", repo_id="tester/sub")
            print(json.dumps([api.endpoint, open(hf_hub_download("tester/sub", "w.bin")).read()]))
        """)
        out = subprocess.run([sys.executable, "-c", script], env={**hub_env, "HF_ENDPOINT": url},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [url, "hello"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_context_manager_stops_cleanly():
    with FakeHub() as hub:
        url = hub.url
        with urllib.request.urlopen(f"{url}/api/whoami-v2") as r:
            assert json.load(r)["name"] == "tester"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/api/whoami-v2", timeout=2)
