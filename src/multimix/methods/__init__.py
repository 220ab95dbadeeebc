"""Training methods with one interface: ``loss = method(model, x, y)``."""

from __future__ import annotations

from .base import ERM, Method
from .distill import SelfDistillation
from .mixupe import MixupE
from .multimix import DenseMultiMixMethod, MultiMixMethod
from .pairwise import CutMix, InputMixup, ManifoldMixup, PairwiseMix

__all__ = [
    "Method", "ERM", "PairwiseMix", "InputMixup", "CutMix", "ManifoldMixup", "MixupE",
    "MultiMixMethod", "DenseMultiMixMethod", "SelfDistillation", "METHODS", "create_method",
]

METHODS = {
    "erm": ERM,
    "mixup": InputMixup,
    "cutmix": CutMix,
    "manifold_mixup": ManifoldMixup,
    "mixupe": MixupE,
    "multimix": MultiMixMethod,
    "dense_multimix": DenseMultiMixMethod,
}


def create_method(name: str, **kwargs) -> Method:
    """Build a method by name (see ``METHODS``); keyword arguments go to its class.

    ``create_method("mixupe", base="cutmix", alpha=1.0)`` builds MixupE over
    CutMix; ``base`` defaults to input mixup.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    if name == "mixupe":
        extra = {k: kwargs.pop(k) for k in ("eta", "version", "threshold") if k in kwargs}
        base_name = kwargs.pop("base", "mixup")
        if base_name not in ("mixup", "cutmix", "manifold_mixup"):
            raise ValueError(f"MixupE base must be one of mixup, cutmix, manifold_mixup; got {base_name!r}")
        return MixupE(_construct(base_name, kwargs), **extra)
    return _construct(name, kwargs)


def _construct(name: str, kwargs: dict) -> Method:
    try:
        return METHODS[name](**kwargs)
    except TypeError as err:
        if "unexpected keyword" in str(err) or "got an unexpected" in str(err):
            raise ValueError(f"method {name!r} does not take {str(err).split('argument')[-1].strip()}: {err}") from err
        raise
