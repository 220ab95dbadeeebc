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

from typing import Set

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_number
from ..contract import MixableClassifier

__all__ = ["GCN", "gcn", "normalized_adjacency"]


def normalized_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Â = D^-1/2 (A + I) D^-1/2 as a sparse (N, N) tensor, from ``edge_index`` (2, E) via PyG's ``gcn_norm``."""
    try:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm
    except ImportError as err:
        raise ImportError("model 'gcn' needs PyTorch Geometric: pip install 'multimix[graph]'") from err
    index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    # gcn_norm's edge (j, i) carries the message j → i: row i of Â gathers from column j.
    return torch.sparse_coo_tensor(index.flip(0), weight, (num_nodes, num_nodes), check_invariants=True).coalesce()


def _glorot_(linear: nn.Linear) -> nn.Linear:
    """Glorot-uniform weights and zero bias: the initialisation of Kipf & Welling's GCN (and PyG's GCNConv)."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class FeatureLayer(nn.Module):
    """The first layer on feature rows without propagation: drop(ReLU(drop(x) W₀ + b₀)), (m, F) → (m, h)."""

    def __init__(self, num_features: int, hidden: int, dropout: float):
        super().__init__()
        self.linear = _glorot_(nn.Linear(num_features, hidden))
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(x, self.dropout, self.training)
        return F.dropout(F.relu(self.linear(x)), self.dropout, self.training)


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
        dropout: dropout probability on the input features and the hidden layer (0.5 in the paper).
    """

    def __init__(self, features: Tensor, edge_index: Tensor, num_classes: int, hidden: int = 16,
                 dropout: float = 0.5):
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
        super().__init__([FeatureLayer(num_features, hidden, dropout)], _glorot_(nn.Linear(hidden, num_classes)))
        self.num_nodes, self.num_features, self.hidden, self.dropout = num_nodes, num_features, hidden, dropout
        self.register_buffer("features", features, persistent=False)
        nonzero = features.nonzero().T  # (2, nnz): bag-of-words features are ~1% non-zero on Cora
        self.register_buffer("feature_index", nonzero, persistent=False)
        self.register_buffer("feature_values", features[nonzero[0], nonzero[1]], persistent=False)
        self.register_buffer("adjacency", normalized_adjacency(edge_index, num_nodes), persistent=False)

    def propagated(self) -> Tensor:
        """The embeddings of every node, Â · drop(ReLU(Â · drop(X) W₀ + b₀)): (N, h)."""
        layer = self.stages[0]
        values = F.dropout(self.feature_values, self.dropout, self.training)
        x = torch.sparse_coo_tensor(self.feature_index, values, self.features.shape, is_coalesced=True,
                                    check_invariants=False)  # the indices were checked at construction
        h = torch.sparse.mm(self.adjacency, torch.sparse.mm(x, layer.linear.weight.T)) + layer.linear.bias
        h = F.dropout(F.relu(h), self.dropout, self.training)
        return torch.sparse.mm(self.adjacency, h)

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
        """The second layer (the head) is not weight-decayed: Kipf & Welling regularise the first layer only."""
        return {"head.weight", "head.bias"}

    def extra_repr(self) -> str:
        return f"nodes={self.num_nodes}, features={self.num_features}, hidden={self.hidden}, dropout={self.dropout}"


def gcn(num_classes: int, *, features: Tensor, edge_index: Tensor, width=None, dropout: float = 0.5) -> GCN:
    """:class:`GCN` with ``width`` hidden units (default 16, Kipf & Welling's)."""
    return GCN(features, edge_index, num_classes, hidden=16 if width is None else width, dropout=dropout)

