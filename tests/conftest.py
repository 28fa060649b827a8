"""Shared pytest configuration for hf_scdd.

Sections are owned by different developers; add new fixtures in a new clearly marked section.

=================================================================================================
Fake Hugging Face Hub + network guard (see ``tests/hub_server.py``)
=================================================================================================

``huggingface_hub``, ``datasets`` and ``transformers`` read ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``HF_HUB_DISABLE_XET`` and the cache paths **at import time**. So, when pytest imports this conftest
(before any test module can import an HF library), this module:

1. starts ONE in-memory :class:`hub_server.FakeHub` on ``127.0.0.1:<free port>`` for the session;
2. points the process environment at it: ``HF_ENDPOINT=<fake hub>``, ``HF_TOKEN=hf_fake_token``,
   ``HF_HOME=<session temp dir>``, ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_DISABLE_TELEMETRY=1``,
   ``HF_HUB_OFFLINE=0``, and removes ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` and any
   cache-path or token overrides, so every in-process HF call talks to the fake hub only;
3. installs a guard on ``socket.getaddrinfo`` / ``socket.socket.connect`` that refuses every
   non-loopback host, so no test in this process can reach the real network (this also makes
   datasets' lookup of ``datasets-server.<host>`` fail at once instead of querying DNS).
   C extensions and subprocesses are not covered by the guard. ``HF_SCDD_ALLOW_NETWORK=1`` disables it.

Fixtures:

* ``fake_hub`` (session): the running :class:`FakeHub`; ``fake_hub.url``, ``fake_hub.log`` (deque of
  ``(method, path, status)``), ``fake_hub.files(repo_id, repo_type="model", revision="main")``.
* ``hub_env`` (function): a full ``os.environ`` copy with the variables above and a fresh
  ``HF_HOME`` under ``tmp_path``; pass it as ``subprocess.run(..., env=hub_env)``.
* ``hub_repo_id`` (function): a unique ``"tester/<test-name>-<hex>"`` repo id.

All tests share one hub: use ``hub_repo_id`` (or another unique name) for each repo you create.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
import warnings

import pytest

# ==============================================================================================
# BEGIN fake Hugging Face Hub section (owner: tests/hub_server.py)
# ==============================================================================================
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hub_server import FakeHub  # noqa: E402

_HF_IMPORTED = [m for m in ("huggingface_hub", "datasets", "transformers") if m in sys.modules]
if _HF_IMPORTED:
    warnings.warn(f"{_HF_IMPORTED} imported before tests/conftest.py: their HF_ENDPOINT may be stale.")

FAKE_HUB = FakeHub()
FAKE_HUB_URL = FAKE_HUB.start()
atexit.register(FAKE_HUB.stop)
_SESSION_HF_HOME = tempfile.mkdtemp(prefix="hf_scdd_hf_home_")
atexit.register(shutil.rmtree, _SESSION_HF_HOME, ignore_errors=True)

#: Variables that every HF client in (and spawned by) the test session must see.
HUB_ENV = {
    "HF_ENDPOINT": FAKE_HUB_URL,
    "HF_TOKEN": "hf_fake_token",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "0",
}
#: Variables that could redirect caches/tokens elsewhere or force offline mode.
_HUB_ENV_UNSET = (
    "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "HF_MODULES_CACHE", "TRANSFORMERS_CACHE",
    "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING",
)
for _name in _HUB_ENV_UNSET:
    os.environ.pop(_name, None)
# Decoded datasets (the built-in Fashion-MNIST's parquet + tensor cache) are not Hub state: keep them in the
# user's normal cache so every test session and subprocess reuses them (same default as hf_scdd.data.cache_dir).
os.environ.setdefault(
    "HF_SCDD_CACHE",
    os.path.join(os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hf_scdd"),
)
os.environ.update(HUB_ENV, HF_HOME=_SESSION_HF_HOME)


def _is_ip_literal(host) -> bool:
    try:
        ipaddress.ip_address((host.decode() if isinstance(host, bytes) else str(host)).split("%")[0])
        return True
    except ValueError:
        return False


def _is_loopback(host) -> bool:
    if host in (None, "", b"", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


if os.environ.get("HF_SCDD_ALLOW_NETWORK") != "1":
    _real_getaddrinfo, _real_connect, _real_connect_ex = (
        socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex)

    def _guarded_getaddrinfo(host, *args, **kwargs):
        if not (_is_loopback(host) or _is_ip_literal(host)):  # IP literals need no DNS; connect() checks them
            raise socket.gaierror(socket.EAI_NONAME, f"tests/conftest.py blocks network access to {host!r}")
        return _real_getaddrinfo(host, *args, **kwargs)

    def _check_address(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise ConnectionRefusedError(f"tests/conftest.py blocks network access to {address!r}")

    def _guarded_connect(self, address):
        _check_address(self, address)
        return _real_connect(self, address)

    def _guarded_connect_ex(self, address):
        _check_address(self, address)
        return _real_connect_ex(self, address)

    socket.getaddrinfo = _guarded_getaddrinfo
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(scope="session")
def fake_hub() -> FakeHub:
    """The session's fake Hub (already started; ``os.environ["HF_ENDPOINT"] == fake_hub.url``)."""
    return FAKE_HUB


@pytest.fixture
def hub_env(fake_hub, tmp_path) -> dict[str, str]:
    """Environment for a subprocess that should talk to ``fake_hub`` with its own empty HF cache."""
    env = {k: v for k, v in os.environ.items() if k not in _HUB_ENV_UNSET}
    env.update(HUB_ENV, HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "hf_home"))
    return env


@pytest.fixture
def hub_repo_id(request) -> str:
    """A repo id that no other test uses, e.g. ``tester/test_push-1a2b3c4d``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60].strip("-.")
    return f"{FAKE_HUB.user}/{name}-{uuid.uuid4().hex[:8]}"


# ==============================================================================================
# END fake Hugging Face Hub section
# ==============================================================================================


# ==============================================================================================
# BEGIN precision section (owner: hf_scdd.training.accelerator.Precision)
# ==============================================================================================
#
# ``--mixed_precision auto`` resolves to bf16 on CPUs with AMX/AVX512-BF16 (and bf16 GPUs) and to float32
# elsewhere; ``$HF_SCDD_AUTO_PRECISION`` (bf16 | no) forces the answer. So that one machine exercises both,
# every test marked ``@pytest.mark.both_precisions`` runs twice, once per forced answer (ids ``auto=no`` /
# ``auto=bf16``); when the variable is already set for the whole session (``HF_SCDD_AUTO_PRECISION=no pytest``)
# marked tests run once, with that value. Unmarked tests see the session's own answer. Keep marked tests tiny:
# on CPUs without bf16 units bf16 is emulated and many times slower.

AUTO_PRECISION_ENV = "HF_SCDD_AUTO_PRECISION"


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("both_precisions") is None:
        return
    values = [os.environ[AUTO_PRECISION_ENV]] if os.environ.get(AUTO_PRECISION_ENV) else ["no", "bf16"]
    metafunc.parametrize("auto_precision", values, indirect=True, ids=[f"auto={v}" for v in values])


@pytest.fixture(autouse=True)
def auto_precision(request, monkeypatch) -> str | None:
    """What ``auto`` is forced to in this test (in the environment, so subprocesses see it too); None for
    unmarked tests, which keep the session's answer."""
    value = getattr(request, "param", None)
    if value is not None:
        monkeypatch.setenv(AUTO_PRECISION_ENV, value)
    return value


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the whole session: every in-process model here is tiny, and on a shared 2-core
    machine two spinning OpenMP threads under load made such steps up to ~100x slower. Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> str:
    """An ImageFolder with train (32/class) and test (8/class) splits of 4 classes of 16x16 grey images whose
    class is the quadrant of a bright square: learnable in a few steps of a width-4 ResNet-10."""
    import numpy as np
    from PIL import Image

    from helpers import quadrant_images

    root = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 32), ("test", 8)):
        images, labels = quadrant_images(per_class, rng)
        for i, (img, c) in enumerate(zip(images, labels)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(folder / f"{i % per_class}.png")
    return str(root)


# ==============================================================================================
# END precision section
# ==============================================================================================
