"""multimix: interpolation-based data augmentation for PyTorch, built around MultiMix.

Quick use in your own loop (embedding-level)::

    mm = multimix.MultiMix(n=1000)
    z = model.pool(model.encode(x))        # (m, d) embeddings
    loss = mm(z, y, model.head)            # n interpolated examples per batch

or any method over a model that follows :mod:`multimix.contract`::

    method = multimix.create_method("multimix", n=1000)
    loss = method(model, x, y)

Subpackages (``multimix.models``, ``multimix.data``, ``multimix.engine``, ``multimix.integrations``...) load on
first use.
"""

import importlib

from . import contract, functional, losses
from .contract import MixableClassifier
from .embedding import DenseMultiMix, MultiMix
from .methods import (
    ERM, METHODS, CutMix, DenseMultiMixMethod, InputMixup, ManifoldMixup, Method, MixupE,
    MultiMixMethod, SelfDistillation, UNLABELLED, create_method,
)
from .methods.terms import LossTerm, Objective

__version__ = "0.1.0"

__all__ = [
    "functional", "contract", "MixableClassifier", "MultiMix", "DenseMultiMix", "Method", "ERM",
    "InputMixup", "CutMix", "ManifoldMixup", "MixupE", "MultiMixMethod", "DenseMultiMixMethod",
    "SelfDistillation", "UNLABELLED", "METHODS", "create_method", "LossTerm", "Objective", "losses", "__version__",
]

# Subpackages loaded on first use (``multimix.models.cnn1d`` after ``import multimix``), so that importing the
# package stays light: the data loaders, the engine and the integrations import more (and optional) libraries.
SUBPACKAGES = ("models", "data", "engine", "evaluation", "experiments", "integrations", "methods", "distributed",
               "embedding", "checks", "sampling", "cli")


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'multimix' has no attribute {name!r}")

