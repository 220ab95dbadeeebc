"""What every data-set loader returns, and the helpers the family modules share.

:class:`Splits` bundles the ``train``, ``val`` and ``test`` data sets with the
input shape, the number of classes, the normalisation applied and a
fingerprint of the data; :func:`default_cache_dir` says where generated or
downloaded data lives; :func:`take` draws a seeded random subset.

Every file a loader reads is untrusted input. The shared rules:

* **Finite values.** :func:`check_values` refuses a value that is NaN or
  infinite, or whose magnitude exceeds a limit (:data:`MAX_MAGNITUDE`, 1e6,
  for values on a unit scale: audio samples at full scale 1, node features,
  MNIST-1D inputs), in one line naming the file and the row or record, when
  the data is loaded: such a value would otherwise surface only as a NaN loss
  in the middle of training, or a NaN test loss after it. A limit of 1e6
  leaves six orders of magnitude above any legitimate value and keeps every
  sum, square and log of the data far from float32's overflow (3.4e38).
* **Bounded sizes.** :func:`read_file` reads a whole file only up to
  :data:`MAX_FILE_BYTES`.
* **Fingerprints.** :func:`fingerprint` gives the short hex SHA-256 that
  identifies the data a run used (``Splits.fingerprint``), from one entry per
  file (:func:`file_entry`: relative path, size, content hash) or per array
  (:func:`array_entry`), so a resumed run can tell that its data changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..checks import check_positive_int

__all__ = ["Splits", "default_cache_dir", "take", "batches", "MAX_MAGNITUDE", "MAX_FILE_BYTES", "FINGERPRINT_CHARS",
           "check_values", "read_file", "fingerprint", "file_entry", "array_entry"]

MAX_MAGNITUDE = 1e6  # largest |value| accepted on a unit scale (see the module docstring)
MAX_FILE_BYTES = 2 ** 30  # a data file read whole into memory: 1 GiB (the largest real one, PubMed's, is ~40 MB)
FINGERPRINT_CHARS = 16  # hex characters of a fingerprint: 64 bits


@dataclass
class Splits:
    """Train/val/test data sets and what evaluation needs to know about their inputs.

    ``mean``/``std`` describe the normalisation the loaders apply (per channel),
    so attacks can work in pixel space ([0, 1] for images); ``None`` means the
    inputs are used as they are (MNIST-1D, already standardised).
    ``input_dtype`` is the dtype of one input (integer for node indices);
    ``graph`` holds what a graph model needs beside the node indices
    (``features`` (N, F) and ``edge_index`` (2, E)), ``None`` for other data.
    ``unlabelled`` holds inputs without labels (N_u, *input_shape) for
    semi-supervised training (the Planetoid graphs: every node outside the
    training split), ``None`` where the data set offers none.
    ``fingerprint`` is a short hex SHA-256 of the data actually used (the
    files' relative paths, sizes and contents, or the generated arrays): the
    same data gives the same fingerprint, other files another one.
    """

    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    input_shape: Tuple[int, ...]
    num_classes: int
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    input_dtype: torch.dtype = torch.float32
    graph: Optional[Dict[str, Any]] = None
    unlabelled: Optional[torch.Tensor] = None
    fingerprint: Optional[str] = None


def default_cache_dir() -> Path:
    """``$MULTIMIX_CACHE`` or ``~/.cache/multimix``."""
    return Path(os.environ.get("MULTIMIX_CACHE", Path.home() / ".cache" / "multimix"))


def take(dataset: Dataset, size: Optional[int], seed: int, name: str) -> Dataset:
    """A random subset of ``size`` examples (all of them when ``size`` is None).

    The order comes from a private ``torch.Generator`` seeded with ``seed``, so
    the global RNG is left alone; ``name`` is the argument named in errors.
    """
    if size is None or size >= len(dataset):
        return dataset
    check_positive_int(size, name)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[:size])


# ---------------------------------------------------------------------------
# untrusted files
# ---------------------------------------------------------------------------


def check_values(values: np.ndarray, where: Callable[[Tuple[int, ...]], str], limit: float = MAX_MAGNITUDE) -> None:
    """Raise ``ValueError`` at the first entry of ``values`` (any shape, C order) that is not finite or exceeds
    ``limit`` in magnitude.

    ``where(index)`` names the entry (the file and its row, e.g. ``"adult-train.csv data row 17: column 'age'"``);
    the message is ``"<where> is not finite (nan)"`` or ``"<where> is 3.2e+07, beyond the ±1e+06 accepted"``.
    """
    values = np.asarray(values)
    if values.size == 0 or values.dtype.kind == "b":
        return
    if values.dtype.kind in "iu":
        values = values.astype(np.float64)  # |int64 min| overflows the integer type
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(values) | (np.abs(values) > limit)
    if not bad.any():
        return
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), values.shape))
    value = values[index]
    if not np.isfinite(value):
        raise ValueError(f"{where(index)} is not finite ({value})")
    raise ValueError(f"{where(index)} is {value:.3g}, beyond the ±{limit:g} accepted (a corrupt value?)")


def read_file(path: Path, what: str = "data file", limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``; ``ValueError`` naming it when it is larger than ``limit`` (checked before reading)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path}: {size} bytes, more than the {limit} a {what} may have")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise ValueError(f"{path}: more than the {limit} bytes a {what} may have")
    return data


def file_entry(relative: str, data: bytes) -> List[Any]:
    """One file's fingerprint entry: its relative path (``/``-separated), size and the SHA-256 of its content."""
    return [relative, len(data), hashlib.sha256(data).hexdigest()]


def array_entry(name: str, array: Any) -> List[Any]:
    """One array's fingerprint entry: its name, dtype, shape and the SHA-256 of its bytes (C order)."""
    array = np.ascontiguousarray(array.numpy() if isinstance(array, torch.Tensor) else array)
    return [name, str(array.dtype), list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]


def fingerprint(kind: str, entries: Iterable[Sequence[Any]]) -> str:
    """The first :data:`FINGERPRINT_CHARS` hex characters of the SHA-256 of ``kind`` and ``entries``, in order.

    ``kind`` says what the entries describe (e.g. ``"fsdd-recordings"``); entries are JSON-encoded, one per line.
    """
    digest = hashlib.sha256(json.dumps(kind).encode() + b"\n")
    for entry in entries:
        digest.update(json.dumps(list(entry)).encode() + b"\n")
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def batches(dataset: Dataset, batch_size: int, device, num_workers: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of ``dataset`` in order, moved to ``device`` (evaluation's and the trainer's reading order)."""
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:  # slices: no per-example fetch and collate
        loader = (tuple(t[start:start + batch_size] for t in dataset.tensors)
                  for start in range(0, len(dataset), batch_size))
    else:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
