"""The Hub round trip: cards (``cards``), the one upload path (``push``), and reading distilled sets back
(``loading``). Names are imported lazily: ``hf_scdd.models`` imports ``hub.cards`` while it initialises."""

from importlib import import_module

_EXPORTS = {
    "load_distilled": "loading",
    "push_distilled": "push",
    "push_model_folder": "push",
    "push_soft_labels": "push",
    "upload_folder": "push",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
