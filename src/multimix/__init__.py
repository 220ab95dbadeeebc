"""multimix: interpolation-based data augmentation for PyTorch, built around MultiMix.

Quick use in your own loop (embedding-level)::

    mm = multimix.MultiMix(n=1000)
    z = model.pool(model.encode(x))        # (m, d) embeddings
    loss = mm(z, y, model.head)            # n interpolated examples per batch

or any method over a model that follows :mod:`multimix.contract`::

    method = multimix.create_method("multimix", n=1000)
    loss = method(model, x, y)
"""

from . import contract, functional
from .contract import MixableClassifier
from .embedding import DenseMultiMix, MultiMix
from .methods import (
    ERM, METHODS, CutMix, DenseMultiMixMethod, InputMixup, ManifoldMixup, Method, MixupE,
    MultiMixMethod, SelfDistillation, UNLABELLED, create_method,
)

__version__ = "0.1.0"

__all__ = [
    "functional", "contract", "MixableClassifier", "MultiMix", "DenseMultiMix", "Method", "ERM",
    "InputMixup", "CutMix", "ManifoldMixup", "MixupE", "MultiMixMethod", "DenseMultiMixMethod",
    "SelfDistillation", "UNLABELLED", "METHODS", "create_method", "__version__",
]
