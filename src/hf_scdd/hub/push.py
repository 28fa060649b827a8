"""The one upload path: every model, distilled set and soft-label folder reaches the Hub through
:func:`upload_folder` (create the repo and branch, upload the folder in one commit, keep working files local).

Folders are uploaded exactly as the stages wrote them, so each keeps its stage-written card (probe accuracy,
provenance, evaluation results); :meth:`hf_scdd.models.ResNet.push_to_hub` saves to a temporary folder and
comes here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import BackboneError, DistilledSetError
from ..formats.distilled_set import DATA_DIR, SOFT_LABELS_DIR, WORKING_DIRS


def push_distilled(folder: str | os.PathLike, repo_id: str, *, commit_message: str | None = None, **options) -> str:
    """Upload a distilled-set folder (card, shards, grid, config, ``soft_labels/``) to a Hub dataset repo.

    Working folders (``units/``, ``inputs/``, ``logs/``, ``checkpoints/``) and hidden temp files stay local. Remote parquet
    shards that the folder no longer has (a re-push with a different shard count) are deleted in the same
    commit, so the repo never mixes two runs' images; likewise remote ``soft_labels/`` files when the folder has
    ``soft_labels/`` (otherwise they are left alone, e.g. pushed by ``hf-scdd relabel``). ``options``:
    ``revision`` (a branch, created if needed) and ``private``, as for :func:`upload_folder`. Returns the
    commit's URL.
    """
    folder = Path(folder)
    if not (folder / "README.md").exists() or not list((folder / DATA_DIR).glob("*.parquet")):
        raise DistilledSetError(f"{folder} is not a finished distilled set (README.md and data/*.parquet needed)")
    # a folder with soft labels replaces the remote ones: stale epoch files would mix two relabel runs
    stale = [f"{DATA_DIR}/*.parquet"] + ([f"{SOFT_LABELS_DIR}/*"] if (folder / SOFT_LABELS_DIR).is_dir() else [])
    return upload_folder(
        folder, repo_id, repo_type="dataset", commit_message=commit_message or "Upload SC-DD distilled set (hf_scdd)",
        delete_patterns=stale, **options,
    )


def push_model_folder(folder: str | os.PathLike, repo_id: str, *, commit_message: str | None = None, **options) -> str:
    """Upload a saved model folder (backbone, probed teacher, student) to a Hub model repo exactly as it is.

    The folder is uploaded as it is, so it keeps the card the stage wrote (probe accuracy, evaluation
    results). Working folders (``checkpoints/``, ``inputs/``, ``logs/``, ``units/``, ``tmp/``) and hidden or ``*.tmp*``
    files stay local. ``options``: ``revision`` and ``private``, as for :func:`upload_folder`. Returns the
    commit's URL.
    """
    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise BackboneError(
            f"{folder} is not a saved model folder (config.json and model.safetensors needed): save it with "
            "save_pretrained first"
        )
    return upload_folder(
        folder, repo_id, repo_type="model", commit_message=commit_message or "Upload hf_scdd model", **options
    )


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str,
    commit_message: str,
    revision: str | None = None,
    private: bool = False,
    delete_patterns: Sequence[str] = (),
    path_in_repo: str | None = None,
) -> str:
    """Create the repo (and branch) if needed and upload ``folder`` in one commit, leaving working files local.

    Every upload of the library goes through here (models, distilled sets, soft labels): ``path_in_repo``
    puts the folder's content under a sub-folder of the repo, ``delete_patterns`` removes remote files of an
    earlier run in the same commit. Returns the commit's URL.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
        path_in_repo=path_in_repo,
        ignore_patterns=[f"{d}/**" for d in (*WORKING_DIRS, "tmp")] + [".*", "**/.*", "*.tmp*", "**/*.tmp*"],
        delete_patterns=list(delete_patterns) or None,
    )
    return str(getattr(info, "commit_url", info))


def push_soft_labels(labels_dir: str | os.PathLike, repo_id: str, *, commit_message: str | None = None) -> str:
    """Upload a ``soft_labels/`` folder into the ``soft_labels/`` folder of a Hub dataset repo (created if
    needed)."""
    return upload_folder(
        labels_dir, repo_id, repo_type="dataset", commit_message=commit_message or "Add soft labels (hf-scdd relabel)",
        path_in_repo=SOFT_LABELS_DIR,
    )
