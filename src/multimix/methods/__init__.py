"""Training methods with one interface: ``loss = method(model, x, y)``; ``method.terms(model, x, y)`` for the loss
terms (see :mod:`multimix.methods.base`)."""

from __future__ import annotations

from typing import Dict, List

from .base import ERM, UNLABELLED, Method
from .distill import SelfDistillation
from .graphmix import GraphMix
from .mixupe import MixupE
from .multimix import DenseMultiMixMethod, MultiMixMethod
from .pairwise import CutMix, InputMixup, ManifoldMixup, PairwiseMix
from .settings import Setting, settings_of
from .terms import LossTerm, Objective

__all__ = [
    "Method", "ERM", "UNLABELLED", "PairwiseMix", "InputMixup", "CutMix", "ManifoldMixup", "MixupE",
    "MultiMixMethod", "DenseMultiMixMethod", "GraphMix", "SelfDistillation", "METHODS", "create_method",
    "method_settings", "distill_settings", "methods_taking", "setting_help", "Setting", "LossTerm", "Objective",
]

METHODS = {
    "erm": ERM,
    "mixup": InputMixup,
    "cutmix": CutMix,
    "manifold_mixup": ManifoldMixup,
    "mixupe": MixupE,
    "multimix": MultiMixMethod,
    "dense_multimix": DenseMultiMixMethod,
    "graphmix": GraphMix,
}


def create_method(name: str, **kwargs) -> Method:
    """Build a method by name (see ``METHODS``); keyword arguments go to its class.

    ``create_method("mixupe", base="cutmix", alpha=1.0)`` builds MixupE over
    CutMix; ``base`` defaults to input mixup. An argument the method does not
    take raises ``ValueError`` naming it and the method's settings.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    cls = METHODS[name]
    objects = {"num_classes", "generator", "distill", "criterion"}
    unknown = sorted(set(kwargs) - set(cls.settings()) - objects)
    if unknown:
        raise ValueError(f"method {name!r} does not take {', '.join(unknown)}; its settings: "
                         f"{', '.join(cls.settings())}")
    return cls(**kwargs)


def method_settings(name: str) -> Dict[str, Setting]:
    """The settings of method ``name`` (see :mod:`multimix.methods.settings`)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name].settings()


def distill_settings() -> Dict[str, Setting]:
    """The settings of :class:`SelfDistillation` (momentum, temperature, weight, warmup_steps, consistency_weight)."""
    return settings_of(SelfDistillation)


def setting_help(key: str) -> str:
    """The help of setting ``key`` with the methods it applies to, one entry per meaning: a name that means
    different things for different methods (``alpha``: Beta for the pairwise methods, Dirichlet for MultiMix) shows
    each meaning beside its methods."""
    meanings: Dict[str, List[str]] = {}
    for name in METHODS:
        setting = method_settings(name).get(key)
        if setting is not None:
            meanings.setdefault(setting.help.rstrip("."), []).append(name)
    return "; ".join(f"{text} ({', '.join(names)})" for text, names in meanings.items())


def methods_taking(key: str) -> List[str]:
    """The names of the methods that have a setting ``key``."""
    return [name for name, cls in METHODS.items() if key in cls.settings()]
