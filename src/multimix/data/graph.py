"""Graphs: the Planetoid citation graphs (Cora, CiteSeer, PubMed) for transductive node classification.

The task (Yang et al., 2016; Kipf & Welling, 2017): one graph whose nodes are
papers (bag-of-words features, row-normalised here as Kipf & Welling do) and
whose edges are citations; predict each node's topic from 20 labelled nodes
per class. The standard ("public") split is used as published: for Cora 140
training, 500 validation and 1,000 test nodes (CiteSeer 120/500/1,000, PubMed
60/500/1,000).

An example is a node: the data sets hold (node index, label) pairs, so
``input_shape`` is ``()`` and ``input_dtype`` integer, and the graph itself
(features X (N, F) and ``edge_index`` (2, E)) travels in ``Splits.graph`` to
the model (:class:`multimix.models.GCN`), which propagates over the whole
graph and returns the rows of the nodes asked for. Training is full-batch
when ``batch_size`` covers the training nodes (the recipes set it so).
``Splits.unlabelled`` lists every node outside the training split (validation
and test nodes included, as in transductive semi-supervised learning; only
their features and edges are used) for ``unlabelled_batch``.

Files are read with PyTorch Geometric's Planetoid reader, without writing
anything into the data directory. Layout (what the kimiyoung/planetoid
repository and ``torch_geometric.datasets.Planetoid(root, "Cora")`` use)::

    DIR/Cora/raw/ind.cora.{x,tx,allx,y,ty,ally,graph,test.index}

``--download`` fetches the files through ``torch_geometric.datasets.Planetoid``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import TensorDataset

from .splits import Splits, default_cache_dir, take

__all__ = ["planetoid", "load_planetoid", "PLANETOID_NAMES", "PLANETOID_FILES", "planetoid_name"]

PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def _geometric():
    try:
        with warnings.catch_warnings():  # torch_geometric's import-time torch.jit deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            import torch_geometric.io
            import torch_geometric.transforms
    except ImportError as err:
        raise ImportError("the Planetoid graphs need PyTorch Geometric: pip install 'multimix[graph]'") from err
    return torch_geometric


def planetoid_name(name: str) -> str:
    """The canonical spelling of a Planetoid graph (``"cora"`` → ``"Cora"``); ``ValueError`` listing them else."""
    for known in PLANETOID_NAMES:
        if isinstance(name, str) and name.lower() == known.lower():
            return known
    raise ValueError(f"unknown Planetoid graph {name!r}; valid: {', '.join(PLANETOID_NAMES)} "
                     "(e.g. --dataset planetoid:CiteSeer)")


def _raw_dir(root: Path, name: str) -> Path:
    """The folder holding ``ind.<name>.*``: ``root/<Name>/raw``, ``root/raw`` or ``root`` itself."""
    prefix = f"ind.{name.lower()}."
    for candidate in (root / name / "raw", root / "raw", root):
        if (candidate / f"{prefix}x").is_file():
            return candidate
    return root / name / "raw"


def planetoid(root, name: str = "Cora", *, num_train: Optional[int] = None, num_val: int = 0,
              num_test: Optional[int] = None, seed: int = 0, download: bool = False) -> Splits:
    """Planetoid graph ``name`` with its standard split, read from ``root`` (see the module docstring).

    ``num_train``, ``num_val`` (0: all 500) and ``num_test`` take seeded random subsets of the standard
    split's nodes; the published protocol uses them all.
    """
    name = planetoid_name(name)
    pyg = _geometric()
    root = Path(root)
    if download:
        from torch_geometric.datasets import Planetoid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            Planetoid(str(root), name)  # fetches root/<Name>/raw; the processed copy it writes is not used
    raw = _raw_dir(root, name)
    missing = [f"ind.{name.lower()}.{suffix}" for suffix in PLANETOID_FILES
               if not (raw / f"ind.{name.lower()}.{suffix}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"Planetoid {name}: {raw} lacks {', '.join(missing)}; expected {root / name / 'raw'}/ind."
            f"{name.lower()}.{{{','.join(PLANETOID_FILES)}}} (the Planetoid raw format). Extract the archive with "
            f"`tar -xzf planetoid-{name.lower()}.tar.gz -C DIR` and pass --data-dir DIR, or pass --download")
    try:
        data = pyg.io.read_planetoid_data(str(raw), name.lower())
        test_rows = pyg.io.planetoid.read_file(str(raw), name.lower(), "tx").size(0)
    except Exception as err:  # pickle and numpy errors of a truncated or foreign file
        raise ValueError(f"Planetoid {name}: cannot read the raw files in {raw} ({type(err).__name__}: {err}); "
                         "are they the Planetoid ind.* pickles, complete?") from err
    index_file = raw / f"ind.{name.lower()}.test.index"
    listed = len(index_file.read_text().split())
    if listed != test_rows:  # a cut-short index would pair test nodes with the wrong feature and label rows
        raise ValueError(f"Planetoid {name}: {index_file} lists {listed} test nodes but ind.{name.lower()}.tx has "
                         f"{test_rows} rows; is the file complete?")
    data = pyg.transforms.NormalizeFeatures()(data)
    labels = data.y.long()

    def nodes(mask: torch.Tensor) -> TensorDataset:
        index = mask.nonzero().flatten()
        return TensorDataset(index, labels[index])

    train = take(nodes(data.train_mask), num_train, seed, "num_train")
    val = take(nodes(data.val_mask), num_val or None, seed + 1, "val_size")
    test = take(nodes(data.test_mask), num_test, seed + 2, "num_test")
    graph = {"features": data.x.float(), "edge_index": data.edge_index.long()}
    # Transductive: every node outside the training split is an unlabelled input (its label is never read).
    unlabelled = (~data.train_mask).nonzero().flatten()
    return Splits(train, val, test, input_shape=(), num_classes=int(labels.max()) + 1, input_dtype=torch.long,
                  graph=graph, unlabelled=unlabelled)


def load_planetoid(name: str, *, data_dir: Optional[str], num_train: Optional[int], num_test: Optional[int],
                   num_val: int, download: bool = False, seed: int = 0, **unused) -> Splits:
    """``load_dataset("planetoid:Cora", ...)`` (bare ``planetoid``: Cora), rooted at ``data_dir``
    (default: the cache's ``planetoid/``). The image options are not used."""
    graph = name.split(":", 1)[1] if ":" in name else "Cora"
    root = Path(data_dir) if data_dir is not None else default_cache_dir() / "planetoid"
    return planetoid(root, graph, num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
                     download=download)
