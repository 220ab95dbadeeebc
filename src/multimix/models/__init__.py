"""Models following the contract (``encode``, ``pool``, ``head``) and adapters for others."""

from __future__ import annotations

from .adapters import TimmModel, TorchvisionResNet, adapt
from .cnn1d import CNN1D, cnn1d
from .preact_resnet import PreActResNet, preact_resnet18, preact_resnet_small

__all__ = ["CNN1D", "cnn1d", "PreActResNet", "preact_resnet18", "preact_resnet_small",
           "TorchvisionResNet", "TimmModel", "adapt", "MODELS", "create_model"]

MODELS = {
    "cnn1d": cnn1d,
    "preact_resnet18": preact_resnet18,
    "preact_resnet_small": preact_resnet_small,
}


def create_model(name: str, **kwargs):
    """Build a model by name (see ``MODELS``); keyword arguments go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
