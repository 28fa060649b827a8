"""Reading a distilled set back: a folder in place, or a Hub repo fetched at ONE resolved revision.

:func:`load_distilled` fetches a repo with ``snapshot_download`` so that the image table and the soft labels
come from the same snapshot, whose folder name is the resolved commit hash: they can never come from two
revisions.

The table is read from the folder's parquet shards themselves (``Dataset.from_parquet``, whose cache is keyed on
the files and their modification times), not with ``datasets.load_dataset(folder)``: for a folder whose card
declares ``configs`` (every distilled set's does), datasets 5.x keys its cache on the folder's *name* and card
only, so a set recovered again into the same folder, or another folder of the same name, came back as the first
table it had cached (measured with datasets 5.2.0; huggingface/datasets#2956 is the same family of problem).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DistilledSetError
from ..formats.distilled_set import DATA_DIR, SOFT_LABELS_DIR
from ..utils import first_line, hub_context


def load_distilled(repo_id_or_folder: str | os.PathLike, revision: str | None = None):
    """Load a distilled set: ``(train Dataset, soft_labels folder or None, resolved revision or None)``.

    A local folder is read in place (revision None). A repo id is fetched once with ``snapshot_download``
    (working offline from the Hub cache too) and everything is read from that one snapshot, whose folder name
    is the resolved commit hash: the image table and the soft labels can never come from two revisions.
    """
    import datasets

    path = Path(repo_id_or_folder)
    resolved: str | None = None
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(repo_id_or_folder), repo_type="dataset", revision=revision))
        except Exception as err:
            raise DistilledSetError(
                f"could not fetch distilled set {repo_id_or_folder!r} (revision {revision!r}) {hub_context()}: "
                f"{type(err).__name__}: {first_line(err)}; pass a local folder or an existing Hub dataset repo id"
            ) from err
        resolved = path.name
    shards = sorted((path / DATA_DIR).glob("train-*.parquet"))
    if not shards:
        raise DistilledSetError(
            f"{path} has no {DATA_DIR}/train-*.parquet shards: not a distilled set (pass the --output_dir of `hf-scdd "
            "recover`, or a Hub dataset repo it pushed)"
        )
    dataset = datasets.Dataset.from_parquet([str(shard) for shard in shards], split="train")
    soft_labels = path / SOFT_LABELS_DIR
    return dataset, (soft_labels if soft_labels.is_dir() else None), resolved
