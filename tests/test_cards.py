"""Dataset cards of distilled sets carry the source dataset's licence and citation."""

from __future__ import annotations

from hf_scdd.hub.cards import DistilledSetCardData, render_dataset_card, source_dataset_terms

BIBTEX = "@inproceedings{doe2020toy,\n  title = {A Toy Dataset},\n  author = {Doe, Jane},\n  year = {2020}\n}"
SOURCE_CARD = f"""---
license: cc-by-4.0
pretty_name: toy
---

# Toy

## Citation

```bibtex
{BIBTEX}
```
"""


def card_for(source: str, license_: str, citation: str | None):
    data = DistilledSetCardData(
        class_names=["a", "b"], num_images=4, ipc=2, image_format="png", image_size=8, channels=1,
        source_dataset=source, backbone="me/backbone", backbone_revision="abc", seed=0,
        recover_config={"iterations": 5, "lr": 0.1, "r_bn": 0.1}, hf_scdd_version="0", num_shards=1,
        license=license_, citation=citation,
    )
    return render_dataset_card(data, num_bytes=100)


def test_builtin_fashion_mnist_card_is_mit_with_the_xiao_citation():
    license_, citation = source_dataset_terms("fashion_mnist")
    assert license_ == "mit" and "Xiao" in citation and "1708.07747" in citation
    card = card_for("fashion_mnist", license_, citation)
    assert card.data.license == "mit"
    assert card.data.source_datasets == ["zalando-datasets/fashion_mnist"]
    assert "Fashion-MNIST: a Novel Image Dataset" in card.text and "```bibtex" in card.text


def test_terms_come_from_the_source_card_of_a_folder(tmp_path):
    (tmp_path / "with_card").mkdir()
    (tmp_path / "with_card" / "README.md").write_text(SOURCE_CARD)
    assert source_dataset_terms(str(tmp_path / "with_card")) == ("cc-by-4.0", BIBTEX)
    (tmp_path / "bare").mkdir()
    assert source_dataset_terms(str(tmp_path / "bare")) == ("other", None)
    card = card_for(str(tmp_path / "bare"), "other", None)
    assert card.data.license == "other" and "```bibtex" not in card.text
    assert "not stated by the source's card" in card.text


def test_terms_come_from_the_source_card_of_a_hub_repo(fake_hub, hub_repo_id):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=SOURCE_CARD.encode(), path_in_repo="README.md", repo_id=hub_repo_id,
                    repo_type="dataset")
    assert source_dataset_terms(hub_repo_id) == ("cc-by-4.0", BIBTEX)
    assert source_dataset_terms("tester/no-such-dataset") == ("other", None)
