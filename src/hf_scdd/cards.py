"""Model and dataset cards: card data as dataclasses, rendered from the Jinja templates in ``model_cards/``.

As in setfit, each card has a dataclass that collects what the stage knows (``BackboneCardData``,
``StudentCardData``); :func:`render_model_card` turns it into a ``huggingface_hub.ModelCard`` whose YAML front
matter carries the machine-readable parts (``library_name``, ``datasets``, ``base_model``, ``model-index``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData



def template_text(name: str) -> str:
    """The text of ``model_cards/<name>`` (packaged with the library)."""
    return resources.files("hf_scdd").joinpath("model_cards", name).read_text()


def library_version() -> str:
    from . import __version__

    return __version__


@dataclass
class BackboneCardData:
    """What the backbone card says; filled from the model's config and ``training`` record."""

    arch: str
    stem: str
    width: int
    in_channels: int
    image_size: int
    num_classes: int
    bn_layers: int
    num_parameters: int
    method: str = "unknown"
    dataset: str | None = None
    epochs: int | None = None
    probe_top1: float | None = None
    probe_epochs: int | None = None
    base_model: str | None = None
    training: dict[str, Any] = field(default_factory=dict)


def backbone_card_data(model) -> BackboneCardData:
    info = dict(model.training_info)
    return BackboneCardData(
        arch=model.arch,
        stem=model.stem,
        width=model.width,
        in_channels=model.in_channels,
        image_size=model.image_size,
        num_classes=model.num_classes,
        bn_layers=model.bn_layer_count(),
        num_parameters=sum(p.numel() for p in model.parameters()),
        method=info.get("method", "unknown"),
        dataset=info.get("dataset"),
        epochs=info.get("epochs"),
        probe_top1=info.get("probe_top1"),
        probe_epochs=info.get("probe_epochs"),
        base_model=info.get("base_model"),
        training=info,
    )


def hub_id(name: str | None) -> str | None:
    """``name`` if it is a Hub id (``owner/name``, not a local path), else None: only Hub ids may go in card
    metadata such as ``datasets``/``base_model``/``source_datasets``."""
    import os

    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def render_model_card(model) -> ModelCard:
    """A backbone's card, from ``model_cards/backbone.md``."""
    data = backbone_card_data(model)
    eval_results = None
    if data.probe_top1 is not None:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=hub_id(data.dataset) or (data.dataset or "unknown"),
                dataset_name=data.dataset or "unknown",
                dataset_split="test",
                metric_type="accuracy",
                metric_name="linear-probe top-1",
                metric_value=round(float(data.probe_top1), 4),
            )
        ]
    tags = ["dataset-distillation", "sc-dd", "batchnorm", data.method]
    card_data = ModelCardData(
        library_name="hf_scdd",
        license="apache-2.0",
        tags=[t for t in tags if t],
        datasets=[d for d in [hub_id(data.dataset)] if d] or None,
        base_model=hub_id(data.base_model),
        model_name=f"{data.arch}-{data.method}",
        eval_results=eval_results,
        pipeline_tag="image-classification",
    )
    return ModelCard.from_template(
        card_data, template_str=template_text("backbone.md"), card=asdict(data), version=library_version()
    )


@dataclass
class StudentCardData:
    """What the student card says: how it was post-trained on a distilled set and how well it does."""

    arch: str
    stem: str
    width: int
    num_classes: int
    dataset: str
    distilled: str | None
    teacher: str | None
    label_mode: str
    epochs: int
    temperature: float
    batch_size: int
    mix: str
    seeds: list[int]
    final_top1_mean: float
    final_top1_std: float
    best_top1_mean: float
    best_top1_std: float
    test_size: int
    metrics: dict[str, float] = field(default_factory=dict)
    results_markdown: str = ""


def render_student_card(data: StudentCardData) -> ModelCard:
    """A post-trained student's card, from ``model_cards/student.md``, with model-index results."""
    eval_results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=hub_id(data.dataset) or data.dataset,
            dataset_name=data.dataset,
            dataset_split="test",
            metric_type="accuracy",
            metric_name=f"top-1, final epoch, mean of {len(data.seeds)} seed(s)",
            metric_value=round(float(data.final_top1_mean), 4),
        )
    ]
    datasets = [d for d in (hub_id(data.distilled), hub_id(data.dataset)) if d]
    card_data = ModelCardData(
        library_name="hf_scdd",
        license="apache-2.0",
        tags=["dataset-distillation", "sc-dd", "knowledge-distillation", f"labels-{data.label_mode}"],
        datasets=datasets or None,
        base_model=hub_id(data.teacher),
        model_name=f"{data.arch}-student-{data.label_mode}",
        eval_results=eval_results,
        pipeline_tag="image-classification",
    )
    return ModelCard.from_template(
        card_data, template_str=template_text("student.md"), card=asdict(data), version=library_version()
    )
