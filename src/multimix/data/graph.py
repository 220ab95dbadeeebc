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

Layout (what the kimiyoung/planetoid repository and
``torch_geometric.datasets.Planetoid(root, "Cora")`` use)::

    DIR/Cora/raw/ind.cora.{x,tx,allx,y,ty,ally,graph,test.index}

``--download`` fetches the missing raw files from the kimiyoung/planetoid
repository (PyTorch Geometric's source), without writing anything else.

**The raw files are Python pickles, and unpickling runs code.** A pickle names
the functions that rebuild its objects, and a crafted ``ind.cora.graph`` can
name ``os.system``; PyTorch Geometric's reader (``pickle.load``) would run it.
So this module reads the files itself (:func:`read_planetoid`, the same
assembly as PyTorch Geometric's ``read_planetoid_data``) with a restricted
unpickler that resolves only the names the format uses: numpy's array, dtype
and scalar reconstructors, ``scipy.sparse.csr_matrix``/``csc_matrix``,
``collections.defaultdict`` and ``list`` (and ``_codecs.encode`` for Latin-1
only, which Python 3 writes for bytes in protocol 2). Any other name is
refused before anything is called, in one line naming the file. What the
pickles hold is then checked before use: matrices of consistent shapes and
finite values (within ±:data:`~multimix.data.splits.MAX_MAGNITUDE`), sparse
matrices rebuilt through scipy's constructor with a full format check and at
most :data:`MAX_DENSE_ELEMENTS` entries, neighbour lists of node ids within the
graph, and a ``test.index`` of distinct node ids that are the test rows'
places. Every file is read whole, at most
:data:`~multimix.data.splits.MAX_FILE_BYTES`.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..checks import brief
from .splits import Splits, check_values, default_cache_dir, file_entry, fingerprint, read_file, take

__all__ = ["planetoid", "load_planetoid", "read_planetoid", "PLANETOID_NAMES", "PLANETOID_FILES", "PLANETOID_URL",
           "MAX_DENSE_ELEMENTS", "planetoid_name"]

PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
MAX_DENSE_ELEMENTS = 2 ** 28  # entries of one feature or label matrix (PubMed's allx: 18,717 × 500 ≈ 9.4e6)
NUM_VAL = 500  # the standard split's validation nodes: the 500 after the training nodes


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


# ---------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """A pickle named something outside the allowed list."""


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes in protocol 2; any codec but Latin-1 is refused."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with the {brief(encoding)} codec")
    return codecs.encode(text, "latin1")


@lru_cache(maxsize=1)
def _allowed() -> Dict[Tuple[str, str], Any]:
    """(module, name) → object for every global the Planetoid pickles may name (Python 2 and 3 spellings)."""
    import scipy.sparse as sp

    # The reconstructors numpy's own pickles name, whichever module (numpy.core / numpy._core) holds them.
    reconstruct = np.ndarray.__reduce__(np.empty(0))[0]
    frombuffer = np.empty(0).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("collections", "defaultdict"): collections.defaultdict,
               ("__builtin__", "list"): list, ("builtins", "list"): list, ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for module in ("scipy.sparse", "scipy.sparse.csr", "scipy.sparse._csr"):
        allowed[(module, "csr_matrix")] = sp.csr_matrix
    for module in ("scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc"):
        allowed[(module, "csc_matrix")] = sp.csc_matrix
    return allowed


class _PlanetoidUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the names of :func:`_allowed` (nothing is imported by name)."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get((module, name))
        if found is None:
            raise _Refused(brief(f"{module}.{name}"))  # repr: a crafted name may hold a newline
        return found


def _unpickle(path: Path, data: bytes) -> Any:
    try:
        return _PlanetoidUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as err:
        raise ValueError(f"{path}: refused to unpickle {err}: a Planetoid file holds only numpy arrays, scipy.sparse "
                         "matrices and a dict of neighbour lists, and this one names other code (a crafted file?)"
                         ) from None
    except Exception as err:  # anything a truncated or foreign pickle raises, from the allowed constructors too
        raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {brief(str(err))}); is it a complete "
                         "Planetoid ind.* pickle?") from None


# ---------------------------------------------------------------------------
# checking what the pickles hold
# ---------------------------------------------------------------------------


def _matrix(obj: Any, path: Path) -> torch.Tensor:
    """A (rows, columns) float32 tensor of a pickled numpy array or csr/csc matrix, checked (see the module)."""
    import scipy.sparse as sp

    if isinstance(obj, (sp.csr_matrix, sp.csc_matrix)):
        try:  # rebuilt through the constructor: the pickle set the attributes directly, unchecked
            rebuilt = type(obj)((obj.data, obj.indices, obj.indptr), shape=obj.shape)
            rebuilt.check_format(full_check=True)
        except Exception as err:
            raise ValueError(f"{path}: not a valid sparse matrix ({type(err).__name__}: {brief(str(err))})") from None
        obj = rebuilt
    elif not isinstance(obj, np.ndarray):
        raise ValueError(f"{path}: holds a {type(obj).__name__}; expected a matrix (numpy array or scipy.sparse)")
    if len(obj.shape) != 2 or obj.dtype.kind not in "biuf":
        raise ValueError(f"{path}: holds a {obj.dtype} array of shape {brief(tuple(obj.shape))}; expected a 2-D "
                         "numeric matrix")
    rows, columns = obj.shape
    if rows * columns > MAX_DENSE_ELEMENTS:
        raise ValueError(f"{path}: a {rows} x {columns} matrix, more than the {MAX_DENSE_ELEMENTS} entries allowed")
    dense = obj.toarray() if sp.issparse(obj) else obj
    check_values(dense, lambda i: f"{path} row {i[0]}: column {i[1]}")
    return torch.from_numpy(np.ascontiguousarray(dense)).to(torch.float)


def _node_id(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _edges(graph: Any, path: Path, num_nodes: int) -> Dict[int, List[int]]:
    """The neighbour lists, checked: a dict of node id → list of node ids, every id in [0, num_nodes)."""
    if not isinstance(graph, dict):
        raise ValueError(f"{path}: holds a {type(graph).__name__}; expected a dict of neighbour lists")
    checked = {}
    for node, neighbours in graph.items():
        if not _node_id(node) or not isinstance(neighbours, list) or not all(map(_node_id, neighbours)):
            raise ValueError(f"{path}: entry {brief(node, 40)}: {brief(neighbours, 60)}; expected a node id and a "
                             "list of node ids")
        outside = [value for value in (node, *neighbours) if not 0 <= value < num_nodes]
        if outside:
            which = f"node {outside[0]}" if outside[0] is node else f"node {node} has neighbour {outside[0]}, which"
            raise ValueError(f"{path}: {which} is {'negative' if outside[0] < 0 else 'out of range'}; node ids must "
                             f"be in [0, {num_nodes}) (the graph's nodes)")
        checked[int(node)] = [int(v) for v in neighbours]
    return checked


def _test_index(path: Path, data: bytes, first: int, test_rows: int, gaps: bool) -> torch.Tensor:
    """The node ids of ``test.index``, one per line, checked: as many as the test rows, distinct, non-negative,
    from ``first`` (the node after ``allx``'s rows) on; without ``gaps`` exactly ``first`` … ``first+test_rows-1``.
    """
    try:
        lines = data.decode("ascii").split()
        ids = [int(line) for line in lines]
    except ValueError:
        bad = next((n for n, line in enumerate(data.decode("ascii", "replace").split(), 1)
                    if not line.lstrip("-").isdigit()), 0)
        raise ValueError(f"{path} line {bad}: not a node id; expected one integer per line") from None
    if len(ids) != test_rows:  # a cut-short index would pair test nodes with the wrong feature and label rows
        raise ValueError(f"{path} lists {len(ids)} test nodes but the tx file has {test_rows} rows; "
                         "is the file complete?")
    last = first + (test_rows if not gaps else MAX_DENSE_ELEMENTS)  # CiteSeer's gaps: bounded by the size check
    seen: Dict[int, int] = {}
    for line, node in enumerate(ids, 1):
        if node < 0:
            raise ValueError(f"{path} line {line}: node {node} is negative; test node ids are >= {first}")
        if node in seen:
            raise ValueError(f"{path} line {line}: node {node} is listed again (first on line {seen[node]}); test "
                             "node ids must be distinct")
        if not first <= node < last:
            raise ValueError(f"{path} line {line}: node {node} is outside [{first}, {last}), the places of the test "
                             "rows after the allx rows")
        seen[node] = line
    if gaps and min(ids) != first:
        raise ValueError(f"{path}: the smallest test node is {min(ids)}; it must be {first}, the node after the "
                         "allx rows")
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_planetoid(raw: Path, name: str):
    """The graph ``name`` from ``raw/ind.<name>.*`` as a PyTorch Geometric ``Data`` (x, edge_index, y and the
    train/val/test masks) and its fingerprint, read safely (see the module docstring).

    The assembly is PyTorch Geometric's ``read_planetoid_data``: nodes are ``allx``'s rows then ``tx``'s, the
    tx row i is node ``test.index[i]``; training nodes are the first ``len(y)``, validation the next 500;
    CiteSeer's test range has gaps (isolated nodes), filled with zero rows.
    """
    pyg = _geometric()
    prefix = f"ind.{name.lower()}"
    paths = {suffix: raw / f"{prefix}.{suffix}" for suffix in PLANETOID_FILES}
    data = {suffix: read_file(path, "Planetoid raw file") for suffix, path in paths.items()}
    digest = fingerprint(f"planetoid:{name}", [file_entry(path.name, data[suffix])
                                              for suffix, path in sorted(paths.items(), key=lambda kv: kv[1].name)])
    loaded = {suffix: _unpickle(paths[suffix], data[suffix]) for suffix in PLANETOID_FILES if suffix != "test.index"}
    matrices = {s: _matrix(loaded[s], paths[s]) for s in ("x", "tx", "allx", "y", "ty", "ally")}
    for features, labels in (("x", "y"), ("tx", "ty"), ("allx", "ally")):
        if len(matrices[features]) != len(matrices[labels]):
            raise ValueError(f"{paths[labels]}: {len(matrices[labels])} rows, but {paths[features].name} has "
                             f"{len(matrices[features])}; each node needs one feature row and one label row")
    for group in ("x", "y"):
        widths = [matrices[s].shape[1] for s in (group, f"t{group}", f"all{group}")]
        if len(set(widths)) > 1:
            raise ValueError(f"Planetoid {name}: the {group}, t{group} and all{group} files in {raw} have different "
                             f"numbers of columns ({', '.join(map(str, widths))})")
    x, tx, allx, y, ty, ally = (matrices[s] for s in ("x", "tx", "allx", "y", "ty", "ally"))
    if len(allx) < len(y) + NUM_VAL:
        raise ValueError(f"{paths['allx']}: {len(allx)} rows, fewer than the {len(y)} training and {NUM_VAL} "
                         "validation nodes of the standard split")
    gaps = name.lower() == "citeseer"
    test_index = _test_index(paths["test.index"], data["test.index"], len(allx), len(tx), gaps)
    sorted_test_index = test_index.sort()[0]
    if gaps:  # CiteSeer: isolated nodes inside the test range get zero rows
        span = int(test_index.max() - test_index.min()) + 1
        if (len(allx) + span) * x.shape[1] > MAX_DENSE_ELEMENTS:
            raise ValueError(f"{paths['test.index']}: test node ids up to {int(test_index.max())} make a graph of "
                             f"more than {MAX_DENSE_ELEMENTS} feature entries")
        tx_ext = torch.zeros(span, tx.size(1), dtype=tx.dtype)
        tx_ext[sorted_test_index - test_index.min(), :] = tx
        ty_ext = torch.zeros(span, ty.size(1), dtype=ty.dtype)
        ty_ext[sorted_test_index - test_index.min(), :] = ty
        tx, ty = tx_ext, ty_ext
    features = torch.cat([allx, tx], dim=0)
    features[test_index] = features[sorted_test_index]
    labels = torch.cat([ally, ty], dim=0).max(dim=1)[1]
    labels[test_index] = labels[sorted_test_index]
    num_nodes = labels.size(0)
    graph = _edges(loaded["graph"], paths["graph"], num_nodes)
    edge_index = pyg.io.planetoid.edge_index_from_dict(graph, num_nodes=num_nodes)
    mask = lambda index: pyg.utils.index_to_mask(index, size=num_nodes)  # noqa: E731
    out = pyg.data.Data(x=features, edge_index=edge_index, y=labels)
    out.train_mask = mask(torch.arange(len(y)))
    out.val_mask = mask(torch.arange(len(y), len(y) + NUM_VAL))
    out.test_mask = mask(test_index)
    return out, digest


def _download(raw: Path, name: str) -> None:
    """Fetch the raw files missing from ``raw`` (nothing is unpickled or processed here)."""
    pyg = _geometric()
    for suffix in PLANETOID_FILES:
        file = f"ind.{name.lower()}.{suffix}"
        if not (raw / file).is_file():
            pyg.data.download_url(f"{PLANETOID_URL}/{file}", str(raw), log=False)


def planetoid(root, name: str = "Cora", *, num_train: Optional[int] = None, num_val: int = 0,
              num_test: Optional[int] = None, seed: int = 0, download: bool = False) -> Splits:
    """Planetoid graph ``name`` with its standard split, read from ``root`` (see the module docstring).

    ``num_train``, ``num_val`` (0: all 500) and ``num_test`` take seeded random subsets of the standard
    split's nodes; the published protocol uses them all. The fingerprint hashes the eight raw files.
    """
    name = planetoid_name(name)
    pyg = _geometric()
    root = Path(root)
    raw = _raw_dir(root, name)
    if download:
        _download(raw, name)
    missing = [f"ind.{name.lower()}.{suffix}" for suffix in PLANETOID_FILES
               if not (raw / f"ind.{name.lower()}.{suffix}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"Planetoid {name}: {raw} lacks {', '.join(missing)}; expected {root / name / 'raw'}/ind."
            f"{name.lower()}.{{{','.join(PLANETOID_FILES)}}} (the Planetoid raw format). Extract the archive with "
            f"`tar -xzf planetoid-{name.lower()}.tar.gz -C DIR` and pass --data-dir DIR, or pass --download")
    data, digest = read_planetoid(raw, name)
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
                  graph=graph, unlabelled=unlabelled, fingerprint=digest)


def load_planetoid(name: str, *, data_dir: Optional[str], num_train: Optional[int], num_test: Optional[int],
                   num_val: int, download: bool = False, seed: int = 0, **unused) -> Splits:
    """``load_dataset("planetoid:Cora", ...)`` (bare ``planetoid``: Cora), rooted at ``data_dir``
    (default: the cache's ``planetoid/``). The image options are not used."""
    graph = name.split(":", 1)[1] if ":" in name else "Cora"
    root = Path(data_dir) if data_dir is not None else default_cache_dir() / "planetoid"
    return planetoid(root, graph, num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
                     download=download)
