"""The two-layer graph convolutional network of Kipf & Welling (2017), following the model contract.

One model holds one fixed graph (transductive node classification): node
features X (N, F) and the symmetrically normalised adjacency with self-loops
Â = D^-1/2 (A + I) D^-1/2 (PyTorch Geometric's ``gcn_norm``). The network is

    logits = Â · drop(ReLU(Â · drop(X) W₀ + b₀)) W₁ + b₁

and because Â H W₁ + b₁ = (Â H) W₁ + b₁, the contract splits it into
``encode`` = the propagated hidden node embeddings Â · drop(ReLU(…)) (m, h)
and a linear ``head`` W₁ (h → c). An example is a node: the input x is a batch
of node indices (m,) (integer dtype), and ``encode`` runs the whole graph and
returns the rows of those nodes. MultiMix, self-distillation and every
embedding-level method therefore work on nodes without knowing about graphs.

What the input- and hidden-level methods mean for nodes (GraphMix, Verma et al.
2021): a mixed node has no place in the graph, so it cannot be propagated.
Layer 0 of a node is its feature row X[i] (``encode(x, 0, 0)``), and a
floating-point input (feature rows, mixed or not) goes through the
*parameter-shared MLP* — the same W₀, b₀, W₁, b₁ without Â:

    layer 0: X[i] (F,)  →  layer 1 = embedding: drop(ReLU(drop(X[i]) W₀ + b₀)) (h,)  →  head W₁

So input mixup (and manifold mixup at layer 0) trains the shared weights on
mixed feature rows, as GraphMix's FCN does, while manifold mixup at layer 1
and MultiMix mix the graph's propagated embeddings. Integer inputs always take
the graph path for the full range (``encode(x)``), float inputs the MLP path.
"""

from __future__ import annotations

import warnings
from typing import Optional, Set

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_int, check_number
from ..contract import MixableClassifier

__all__ = ["GCN", "gcn", "graphmix_gcn", "normalized_adjacency"]


def normalized_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Â = D^-1/2 (A + I) D^-1/2 as a sparse (N, N) tensor, from ``edge_index`` (2, E) via PyG's ``gcn_norm``."""
    try:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm
    except ImportError as err:
        raise ImportError("model 'gcn' needs PyTorch Geometric: pip install 'multimix[graph]'") from err
    index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    # gcn_norm's edge (j, i) carries the message j → i: row i of Â gathers from column j.
    return torch.sparse_coo_tensor(index.flip(0), weight, (num_nodes, num_nodes), check_invariants=True).coalesce()


INITS = ("glorot", "uniform")


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, x · 1[u >= p] / (1 − p) with u ~ U(0, 1): the law of ``F.dropout``, drawn as uniforms
    because torch's CPU dropout (a Bernoulli draw per element) takes about twice as long, and a GCN step on
    sparse features spends most of its time here."""
    if not training or p == 0.0:
        return x
    return x * (torch.rand_like(x) >= p).to(x.dtype) * (1.0 / (1.0 - p))


def compressed(rows: Tensor, num_rows: int) -> Tensor:
    """CSR row pointers (num_rows + 1,) of sorted row indices ``rows`` (nnz,)."""
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def csr(crow: Tensor, col: Tensor, values: Tensor, shape) -> Tensor:
    """The sparse CSR matrix of these parts (built by the model, so their invariants hold unchecked)."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": products and transposes are stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class SparseProduct(torch.autograd.Function):
    """A B for a constant sparse CSR matrix A (k, n) and a dense B (n, d), with ∂/∂B = Aᵀ G from Aᵀ in CSR.

    Sparse CSR products are several times faster than COO ones on CPU, but autograd's own CSR backward
    transposes A at every step; A is constant here, so its transpose is built once with the model.
    """

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, b: Tensor) -> Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, b.to(a.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, torch.sparse.mm(ctx.a_t, grad.to(ctx.a_t.dtype))


def sparse_product(a: Tensor, a_t: Tensor, b: Tensor) -> Tensor:
    """A B (k, d) for sparse CSR A (k, n) with its transpose ``a_t`` (n, k), and dense B (n, d)."""
    return SparseProduct.apply(a, a_t, b)


def _initialised(linear: nn.Linear, init: str) -> nn.Linear:
    """``linear`` with zero bias and weights by ``init``: ``"glorot"`` (Glorot-uniform: Kipf & Welling's GCN and
    PyG's GCNConv) or ``"uniform"`` (U(±1/√out): GraphMix's official code)."""
    if init == "glorot":
        nn.init.xavier_uniform_(linear.weight)
    else:
        bound = linear.out_features ** -0.5
        nn.init.uniform_(linear.weight, -bound, bound)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


class FeatureLayer(nn.Module):
    """The first layer on feature rows without propagation: drop_h(ReLU(drop(x) W₀ + b₀)), (m, F) → (m, h)."""

    def __init__(self, num_features: int, hidden: int, dropout: float, hidden_dropout: float, bias: bool = True,
                 init: str = "glorot"):
        super().__init__()
        self.linear = _initialised(nn.Linear(num_features, hidden, bias=bias), init)
        self.dropout, self.hidden_dropout = dropout, hidden_dropout

    def forward(self, x: Tensor) -> Tensor:
        x = dropout(x, self.dropout, self.training)
        return dropout(F.relu(self.linear(x)), self.hidden_dropout, self.training)


class GCN(MixableClassifier):
    """Two-layer GCN over one graph; inputs are node indices (m,), see the module docstring.

    Shapes: x (m,) node indices → ``encode`` (m, h) propagated embeddings →
    ``pool`` (identity) → ``head`` (m, c). Feature rows (m, F) (float) take the
    parameter-shared MLP path. ``num_stages`` is 1: manifold mixup mixes at
    layer 0 (feature rows) or 1 (the embedding).

    The graph tensors are non-persistent buffers: they move with ``.to()``
    but are not saved in checkpoints (the data loader rebuilds them). On the
    graph path the input dropout acts on the non-zero entries of X only, as in
    Kipf & Welling's sparse implementation: the same distribution as dense
    dropout (zeros stay zero), at a cost proportional to the non-zeros.

    Args:
        features: X (N, F), node features (row-normalised by the Planetoid loader, as Kipf & Welling do).
        edge_index: (2, E) integer edges (both directions for an undirected graph).
        num_classes: c.
        hidden: h, units of the hidden layer (16 in the paper).
        dropout: dropout probability on the input features (0.5 in the paper).
        hidden_dropout: dropout probability on the hidden layer; None: ``dropout`` (the paper's).
        bias: whether the two layers have biases b₀, b₁ (the paper's do; GraphMix's code has none).
        init: ``"glorot"`` (the paper's) or ``"uniform"`` U(±1/√out) (GraphMix's code).
        decay_head: whether weight decay reaches the second layer (the paper decays the first layer only).
    """

    def __init__(self, features: Tensor, edge_index: Tensor, num_classes: int, hidden: int = 16,
                 dropout: float = 0.5, hidden_dropout: Optional[float] = None, bias: bool = True,
                 init: str = "glorot", decay_head: bool = False):
        if not (isinstance(features, Tensor) and features.dim() == 2 and features.is_floating_point()):
            raise ValueError(f"features must be a floating (N, F) tensor, got "
                             f"{tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}")
        if not (isinstance(edge_index, Tensor) and edge_index.dim() == 2 and edge_index.shape[0] == 2
                and not edge_index.is_floating_point()):
            raise ValueError("edge_index must be an integer (2, E) tensor of node indices")
        num_nodes, num_features = features.shape
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"edge_index must hold node indices in [0, {num_nodes}), got values in "
                             f"[{int(edge_index.min())}, {int(edge_index.max())}]")
        check_int(num_classes, "num_classes", 1)
        check_int(hidden, "hidden", 1)
        dropout = check_number(dropout, "dropout", minimum=0.0, maximum=1.0, maximum_exclusive=True)
        hidden_dropout = dropout if hidden_dropout is None else check_number(
            hidden_dropout, "hidden_dropout", minimum=0.0, maximum=1.0, maximum_exclusive=True)
        init = check_choice(init, "init", INITS)
        super().__init__([FeatureLayer(num_features, hidden, dropout, hidden_dropout, bool(bias), init)],
                         _initialised(nn.Linear(hidden, num_classes, bias=bool(bias)), init))
        self.num_nodes, self.num_features, self.hidden, self.dropout = num_nodes, num_features, hidden, dropout
        self.hidden_dropout, self.decay_head = hidden_dropout, bool(decay_head)
        self.register_buffer("features", features, persistent=False)
        # X's non-zeros (bag-of-words features are ~1% non-zero on Cora) in row-major (CSR) order, and the
        # order of Xᵀ's: dropout draws one mask over the values, which both products then share.
        rows, cols = features.nonzero().T
        self.register_buffer("feature_values", features[rows, cols], persistent=False)
        self.register_buffer("feature_crow", compressed(rows, num_nodes), persistent=False)
        self.register_buffer("feature_col", cols, persistent=False)
        order = torch.argsort(cols * num_nodes + rows)
        self.register_buffer("feature_t_order", order, persistent=False)
        self.register_buffer("feature_t_crow", compressed(cols[order], num_features), persistent=False)
        self.register_buffer("feature_t_col", rows[order], persistent=False)
        # Â and Âᵀ as CSR parts (crow, col, values): plain tensors move, cast and deep-copy like any buffer.
        adjacency = normalized_adjacency(edge_index, num_nodes)
        for name, matrix in (("adjacency", adjacency), ("adjacency_t", adjacency.t().coalesce())):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                csr = matrix.to_sparse_csr()
            self.register_buffer(f"{name}_crow", csr.crow_indices(), persistent=False)
            self.register_buffer(f"{name}_col", csr.col_indices(), persistent=False)
            self.register_buffer(name, csr.values(), persistent=False)

    def propagated(self) -> Tensor:
        """The embeddings of every node, Â · drop_h(ReLU(Â · drop(X) W₀ + b₀)): (N, h)."""
        layer = self.stages[0]
        values = dropout(self.feature_values, self.dropout, self.training)
        n, f = self.features.shape
        x, x_t = csr(self.feature_crow, self.feature_col, values, (n, f)), csr(
            self.feature_t_crow, self.feature_t_col, values[self.feature_t_order], (f, n))
        a, a_t = csr(self.adjacency_crow, self.adjacency_col, self.adjacency, (n, n)), csr(
            self.adjacency_t_crow, self.adjacency_t_col, self.adjacency_t, (n, n))
        h = sparse_product(a, a_t, sparse_product(x, x_t, layer.linear.weight.T))
        if layer.linear.bias is not None:
            h = h + layer.linear.bias
        h = dropout(F.relu(h), self.hidden_dropout, self.training)
        return sparse_product(a, a_t, h)

    def encode(self, x: Tensor, start: int = 0, end=None) -> Tensor:
        """Node indices (m,) → propagated embeddings (m, h), or layer ``end``; feature rows → the MLP path."""
        end = self.num_stages if end is None else end
        if not x.is_floating_point():
            if start != 0 or x.dim() != 1:
                raise ValueError(f"node indices enter at layer 0 as an (m,) tensor; got shape {tuple(x.shape)} at "
                                 f"layer {start}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_nodes):
                raise ValueError(f"node indices must lie in [0, {self.num_nodes}), got values in "
                                 f"[{int(x.min())}, {int(x.max())}]")
            if end == self.num_stages:
                return self.propagated()[x]
            x = self.features[x]  # layer 0 of a node: its feature row
        return super().encode(x, start, end)

    def no_weight_decay(self) -> Set[str]:
        """The second layer (the head) is not weight-decayed unless ``decay_head``: Kipf & Welling regularise the
        first layer only, GraphMix's code every weight."""
        return set() if self.decay_head else {name for name, _ in self.named_parameters() if name.startswith("head.")}

    def extra_repr(self) -> str:
        return (f"nodes={self.num_nodes}, features={self.num_features}, hidden={self.hidden}, dropout={self.dropout}, "
                f"hidden_dropout={self.hidden_dropout}, bias={self.head.bias is not None}, "
                f"decay_head={self.decay_head}")


def gcn(num_classes: int, *, features: Tensor, edge_index: Tensor, width=None, dropout: float = 0.5) -> GCN:
    """:class:`GCN` with ``width`` hidden units (default 16, Kipf & Welling's)."""
    return GCN(features, edge_index, num_classes, hidden=16 if width is None else width, dropout=dropout)


def graphmix_gcn(num_classes: int, *, features: Tensor, edge_index: Tensor, width=None) -> GCN:
    """The GCN of GraphMix's official code (``semisupervised/codes/gnn.py`` and ``run_cora.py``): ``width``
    hidden units (default 16), input dropout 0.5, no hidden dropout, no biases, weights U(±1/√out), weight decay
    on both layers. Its parameter-shared MLP path is GraphMix's FCN (``forward_aux``)."""
    return GCN(features, edge_index, num_classes, hidden=16 if width is None else width, dropout=0.5,
               hidden_dropout=0.0, bias=False, init="uniform", decay_head=True)

