"""Data sets: MNIST-1D (generated locally), CIFAR-10/100 (torchvision), any ImageFolder tree, UCI Adult (tables),
FSDD spoken digits (log-mel spectrograms), the Planetoid citation graphs (node classification).

Every loader returns a :class:`Splits` of ``train``, ``val`` (held out from the
training set, for choosing hyper-parameters) and ``test`` data sets, plus the
input shape and the number of classes. Nothing here downloads unless asked
(``download=True`` for CIFAR, Adult, FSDD and Planetoid).

Every file a loader reads is untrusted (see :mod:`.splits`): values that are
not finite or absurdly large, images that do not decode, pickles that name
code and corrupt caches are refused (or rebuilt) when the data is loaded,
before any training, in one line naming the file; ``Splits.fingerprint``
identifies the data a run used.

One module per data family (:mod:`.mnist1d`, :mod:`.images`, :mod:`.tabular`, :mod:`.audio`, :mod:`.graph`), the shared
:class:`Splits` and helpers in :mod:`.splits`, out-of-distribution sets in
:mod:`.ood`. :func:`load_dataset` dispatches by name through ``_LOADERS``: to
add a family, write its module with a loader that takes the data-set name and
:func:`load_dataset`'s keyword arguments (ignoring those it does not use) and
add one entry to ``_LOADERS``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from .audio import fsdd, load_fsdd
from .graph import load_planetoid, planetoid
from .images import cifar, image_folder, load_cifar, load_image_folder
from .mnist1d import load_mnist1d, mnist1d
from .ood import ShuffledPositions
from .tabular import adult, load_adult
from .splits import Splits, batches, default_cache_dir

__all__ = ["Splits", "batches", "DATASETS", "load_dataset", "dataset_family", "check_dataset_name", "mnist1d", "cifar", "image_folder",
           "adult", "fsdd", "planetoid", "default_cache_dir",
           "ShuffledPositions"]

# name -> loader(name, *, data_dir, num_train, num_test, num_val, download, augment, image_size, seed)
_LOADERS: Dict[str, Callable[..., Splits]] = {
    "mnist1d": load_mnist1d,
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "imagefolder": load_image_folder,
    "adult": load_adult,
    "fsdd": load_fsdd,
    "planetoid": load_planetoid,
}

DATASETS = tuple(_LOADERS)


def dataset_family(name: str) -> str:
    """The family part of a data-set name: ``"planetoid"`` for ``"planetoid:Cora"``, the name itself otherwise."""
    return name.split(":", 1)[0]


def check_dataset_name(name: str) -> str:
    """``name`` if its family is known (``family`` or ``family:argument``); else ``ValueError`` listing them."""
    if not isinstance(name, str) or dataset_family(name) not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)} "
                         "(some take an argument after a colon, e.g. family:argument)")
    return name


def load_dataset(name: str, *, data_dir: Optional[str] = None, num_train: Optional[int] = None,
                 num_test: Optional[int] = None, num_val: int = 0, download: bool = False, augment: bool = True,
                 image_size: int = 32, seed: int = 0) -> Splits:
    """Load a data set by name (see ``DATASETS``; ``family:argument`` passes the argument to the family's loader)."""
    check_dataset_name(name)
    return _LOADERS[dataset_family(name)](name, data_dir=data_dir, num_train=num_train, num_test=num_test, num_val=num_val,
                          download=download, augment=augment, image_size=image_size, seed=seed)
