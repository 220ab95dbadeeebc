"""Graphs: the Planetoid loader from tiny raw files in the real format, the GCN against PyG's GCNConv and a dense
reference, the methods on nodes, and full-batch training with best-validation selection.

Nothing here reads the real Cora files or downloads: a fixture writes a 560-node graph in the Planetoid raw
format (kimiyoung/planetoid): ``x``, ``tx``, ``allx`` pickled ``scipy.sparse.csr_matrix`` feature rows, ``y``,
``ty``, ``ally`` pickled one-hot numpy arrays, ``graph`` a pickled ``defaultdict(list)`` of neighbour lists and
``test.index`` one node index per line, under ``tmp/Cora/raw/ind.cora.*``. PyG's reader takes the training nodes
as the first ``len(y)`` nodes and the validation nodes as the next 500, so ``allx`` has 6 + 514 rows; the test
nodes are the 40 ``tx`` rows, placed at the (shuffled) nodes ``test.index`` names.
"""

import collections
import dataclasses
import json
import pickle
import shutil
from pathlib import Path
from typing import Set, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric")
sp = pytest.importorskip("scipy.sparse")

from multimix import functional as MF  # noqa: E402
from multimix.data import load_dataset  # noqa: E402
from multimix.data.graph import PLANETOID_FILES, planetoid, planetoid_name  # noqa: E402
from multimix.engine import Trainer, TrainConfig, load_checkpoint  # noqa: E402
from multimix.engine.config import load_recipe  # noqa: E402
from multimix.engine.evaluate import evaluate  # noqa: E402
from multimix.evaluation.report import report  # noqa: E402
from multimix.methods import InputMixup, ManifoldMixup, SelfDistillation, create_method  # noqa: E402
from multimix.models import GCN, build_model  # noqa: E402
from multimix.models.gcn import normalized_adjacency  # noqa: E402

NUM_CLASSES, NUM_FEATURES = 3, 24
NUM_LABELLED, NUM_ALLX, NUM_TEST = 6, 520, 40  # y: 2 nodes per class; allx: 6 train + 500 val + 14 more
NUM_NODES = NUM_ALLX + NUM_TEST
ZERO_ROWS = (10, 530)  # nodes without any word (row normalisation must leave them at zero)
ISOLATED = 7  # a validation node without edges (only its self-loop in Â)
PARAMETERS = {"stages.0.linear.weight", "stages.0.linear.bias", "head.weight", "head.bias"}


# ------------------------------------------------------------------ a tiny graph in the Planetoid raw format

@dataclasses.dataclass
class Truth:
    """What the raw files encode, by node: features (N, F) before normalisation, labels (N,), undirected edges."""

    root: Path
    features: np.ndarray
    labels: np.ndarray
    edges: Set[Tuple[int, int]]  # both directions, no self-loops, no duplicates
    test_index: np.ndarray  # the order of test.index (= the order of the tx and ty rows)

    def adjacency(self) -> np.ndarray:
        a = np.zeros((NUM_NODES, NUM_NODES))
        for i, j in self.edges:
            a[i, j] = 1.0
        return a


def write_planetoid(raw: Path, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, Set[Tuple[int, int]], np.ndarray]:
    """Write ``raw/ind.cora.*`` (a homophilous random graph with class-indicative words); returns its truth."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(NUM_LABELLED) % NUM_CLASSES,
                             rng.integers(0, NUM_CLASSES, NUM_NODES - NUM_LABELLED)])
    features = (rng.random((NUM_NODES, NUM_FEATURES)) < 0.06).astype(np.float32)  # noise words
    for i in range(NUM_NODES):  # two words of the node's class block (8 words per class)
        features[i, labels[i] * 8 + rng.choice(8, 2, replace=False)] = 1.0
    features[list(ZERO_ROWS)] = 0.0
    by_class = [np.flatnonzero(labels == c) for c in range(NUM_CLASSES)]
    graph = collections.defaultdict(list)
    for i in range(NUM_NODES):
        graph[i]  # every node has its (possibly empty) list, as in the originals
        if i == ISOLATED:
            continue
        for _ in range(2):
            pool = by_class[labels[i]] if rng.random() < 0.8 else np.arange(NUM_NODES)
            j = int(rng.choice(pool))
            if j not in (i, ISOLATED):
                graph[i].append(j)
                graph[j].append(i)
    graph[3].append(3)  # a self-loop and a duplicated edge, as the original files have: the reader drops them
    graph[0] += [1, 1]
    graph[1] += [0]
    edges = {(i, j) for i, js in graph.items() for j in js if i != j}
    test_index = rng.permutation(np.arange(NUM_ALLX, NUM_NODES))
    onehot = np.eye(NUM_CLASSES, dtype=np.int32)[labels]

    def dump(name, obj):
        with open(raw / f"ind.cora.{name}", "wb") as f:
            pickle.dump(obj, f)

    dump("x", sp.csr_matrix(features[:NUM_LABELLED]))
    dump("y", onehot[:NUM_LABELLED])
    dump("allx", sp.csr_matrix(features[:NUM_ALLX]))
    dump("ally", onehot[:NUM_ALLX])
    dump("tx", sp.csr_matrix(features[test_index]))  # row i of tx is node test_index[i]
    dump("ty", onehot[test_index])
    dump("graph", graph)
    (raw / "ind.cora.test.index").write_text("".join(f"{i}\n" for i in test_index))
    return features, labels, edges, test_index


@pytest.fixture(scope="module")
def cora(tmp_path_factory) -> Truth:
    root = tmp_path_factory.mktemp("planetoid")
    return Truth(root, *write_planetoid(root / "Cora" / "raw"))


@pytest.fixture(scope="module")
def splits(cora):
    return planetoid(cora.root, "Cora")


@pytest.fixture
def cora_copy(cora, tmp_path) -> Path:
    """A private copy of the raw files (for the tests that damage them); returns its root."""
    shutil.copytree(cora.root, tmp_path / "data")
    return tmp_path / "data"


def nodes_of(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def labels_of(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ the loader

def test_standard_split_from_the_raw_files(splits, cora):
    assert splits.input_shape == () and splits.input_dtype == torch.long and splits.num_classes == NUM_CLASSES
    assert splits.mean is None and splits.std is None
    train, val, test = nodes_of(splits.train), nodes_of(splits.val), nodes_of(splits.test)
    assert train.dtype == val.dtype == test.dtype == torch.long
    assert train.tolist() == list(range(NUM_LABELLED))  # the first len(y) nodes
    assert val.tolist() == list(range(NUM_LABELLED, NUM_LABELLED + 500))  # the next 500
    assert sorted(test.tolist()) == sorted(cora.test_index.tolist())  # the nodes test.index names
    assert not (set(train.tolist()) | set(val.tolist())) & set(test.tolist())
    x, edge_index = splits.graph["features"], splits.graph["edge_index"]
    assert x.shape == (NUM_NODES, NUM_FEATURES) and x.dtype == torch.float32
    assert edge_index.shape[0] == 2 and edge_index.dtype == torch.long


def test_labels_are_those_of_the_one_hot_files(splits, cora):
    for dataset in (splits.train, splits.val, splits.test):
        nodes, labels = nodes_of(dataset), labels_of(dataset)
        assert labels.dtype == torch.long
        assert labels.tolist() == cora.labels[nodes.numpy()].tolist()
    # the test node test_index[i] carries row i of ty
    test = dict(zip(nodes_of(splits.test).tolist(), labels_of(splits.test).tolist()))
    assert [test[int(node)] for node in cora.test_index] == cora.labels[cora.test_index].tolist()


def test_features_are_the_rows_of_the_files_row_normalised(splits, cora):
    x = splits.graph["features"].numpy()
    sums = cora.features.sum(1, keepdims=True)
    np.testing.assert_allclose(x, cora.features / np.maximum(sums, 1.0), rtol=0, atol=1e-7)
    nonzero = sums[:, 0] > 0
    np.testing.assert_allclose(x[nonzero].sum(1), 1.0, atol=1e-6)
    assert (x[list(ZERO_ROWS)] == 0).all() and not nonzero[list(ZERO_ROWS)].any()
    # tx row 0 is the first node of test.index, not the first test node by number
    first = int(cora.test_index[0])
    assert first != NUM_ALLX and np.allclose(x[first], cora.features[first] / sums[first])


def test_edges_are_the_neighbour_lists_without_self_loops_or_duplicates(splits, cora):
    edge_index = splits.graph["edge_index"]
    pairs = list(zip(*edge_index.tolist()))
    assert len(pairs) == len(set(pairs))  # duplicates merged
    assert set(pairs) == cora.edges
    assert all((j, i) in cora.edges for i, j in pairs)  # undirected: both directions
    assert (3, 3) not in set(pairs) and not (edge_index == ISOLATED).any()


def test_names_are_case_insensitive_and_the_family_defaults_to_cora(cora, splits):
    assert planetoid_name("cora") == planetoid_name("CORA") == "Cora"
    assert planetoid_name("citeseer") == "CiteSeer" and planetoid_name("pubmed") == "PubMed"
    for name in ("planetoid:cora", "planetoid:CORA", "planetoid:Cora", "planetoid"):
        loaded = load_dataset(name, data_dir=str(cora.root))
        assert torch.equal(loaded.graph["features"], splits.graph["features"]), name
        assert torch.equal(loaded.graph["edge_index"], splits.graph["edge_index"]), name
        assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (NUM_LABELLED, 500, NUM_TEST)


@pytest.mark.parametrize("where", ["Cora", "Cora/raw"])
def test_data_dir_may_point_at_the_graphs_folder_or_its_raw_folder(cora, splits, where):
    loaded = load_dataset("planetoid:Cora", data_dir=str(cora.root / where))
    assert torch.equal(loaded.graph["features"], splits.graph["features"])
    assert torch.equal(nodes_of(loaded.test), nodes_of(splits.test))


def test_subsets_of_the_standard_split_are_seeded(cora, splits):
    a = planetoid(cora.root, "Cora", num_train=3, num_val=10, num_test=5, seed=1)
    b = planetoid(cora.root, "Cora", num_train=3, num_val=10, num_test=5, seed=1)
    c = planetoid(cora.root, "Cora", num_train=3, num_val=10, num_test=5, seed=2)
    assert (len(a.train), len(a.val), len(a.test)) == (3, 10, 5)
    for sub, full in ((a.train, splits.train), (a.val, splits.val), (a.test, splits.test)):
        assert set(nodes_of(sub).tolist()) <= set(nodes_of(full).tolist())
    assert all(torch.equal(nodes_of(getattr(a, s)), nodes_of(getattr(b, s))) for s in ("train", "val", "test"))
    assert any(not torch.equal(nodes_of(getattr(a, s)), nodes_of(getattr(c, s))) for s in ("train", "val", "test"))
    assert len(a.graph["features"]) == NUM_NODES  # the whole graph travels with any subset


def test_unknown_graph_names_the_valid_ones(cora):
    with pytest.raises(ValueError) as err:
        load_dataset("planetoid:Reddit", data_dir=str(cora.root))
    assert "'Reddit'" in _one_line(err) and "Cora, CiteSeer, PubMed" in str(err.value)
    with pytest.raises(ValueError, match="Cora, CiteSeer, PubMed"):
        planetoid(cora.root, "cora2")


def test_missing_files_are_named(cora_copy):
    raw = cora_copy / "Cora" / "raw"
    (raw / "ind.cora.graph").unlink()
    (raw / "ind.cora.ty").unlink()
    with pytest.raises(FileNotFoundError) as err:
        planetoid(cora_copy, "Cora")
    message = str(err.value)
    assert "ind.cora.ty, ind.cora.graph" in message
    assert "ind.cora.allx" not in message.split("lacks", 1)[1].split(";")[0]  # only the missing ones are listed
    assert str(raw) in message


def test_an_empty_folder_lists_every_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("planetoid:PubMed", data_dir=str(tmp_path))
    lacks = str(err.value).split("lacks", 1)[1].split(";")[0]
    assert [name.strip() for name in lacks.split(",")] == [f"ind.pubmed.{s}" for s in PLANETOID_FILES]
    assert str(tmp_path / "PubMed" / "raw") in str(err.value)


@pytest.mark.parametrize("name", [
    "allx", "x", "y", "ty", "graph", "test.index",
])
def test_a_truncated_file_is_a_one_line_value_error(cora_copy, name):
    path = cora_copy / "Cora" / "raw" / f"ind.cora.{name}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        result = planetoid(cora_copy, "Cora")
    except ValueError as caught:
        message = str(caught)
        assert "\n" not in message and str(cora_copy / "Cora" / "raw") in message
        assert "cannot read" in message or ("test.index" in message and "is the file complete" in message)
    else:
        raise AssertionError(f"a truncated ind.cora.{name} loaded: {len(result.test)} test nodes")


# ------------------------------------------------------------------ the GCN against references

def _gcn(splits, seed=0, **kw) -> GCN:
    torch.manual_seed(seed)
    return GCN(splits.graph["features"], splits.graph["edge_index"], NUM_CLASSES, **kw)


def test_gcn_equals_two_pyg_gcnconv_layers(splits):
    from torch_geometric.nn import GCNConv

    model = _gcn(splits, hidden=8).eval()
    x, edge_index = splits.graph["features"], splits.graph["edge_index"]
    conv1, conv2 = GCNConv(NUM_FEATURES, 8), GCNConv(8, NUM_CLASSES)
    with torch.no_grad():
        conv1.lin.weight.copy_(model.stages[0].linear.weight)
        conv1.bias.copy_(model.stages[0].linear.bias)
        conv2.lin.weight.copy_(model.head.weight)
        conv2.bias.copy_(model.head.bias)
        want = conv2(F.relu(conv1(x, edge_index)), edge_index)
        nodes = torch.arange(NUM_NODES)
        got = model(nodes)
        assert got.shape == (NUM_NODES, NUM_CLASSES)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        some = torch.tensor([559, 3, ISOLATED, 3, 0])  # any order, repeats allowed
        torch.testing.assert_close(model(some), want[some], rtol=1e-5, atol=1e-5)


def test_gcn_equals_a_dense_reference_built_from_the_files_truth(splits, cora):
    model = _gcn(splits, seed=3, hidden=5, dropout=0.3).eval()
    a = cora.adjacency() + np.eye(NUM_NODES)
    d = 1.0 / np.sqrt(a.sum(1))
    a_hat = d[:, None] * a * d[None, :]
    x = cora.features / np.maximum(cora.features.sum(1, keepdims=True), 1.0)
    w0, b0 = (p.detach().double().numpy() for p in (model.stages[0].linear.weight, model.stages[0].linear.bias))
    w1, b1 = (p.detach().double().numpy() for p in (model.head.weight, model.head.bias))
    hidden = a_hat @ np.maximum(a_hat @ x @ w0.T + b0, 0.0)
    logits = hidden @ w1.T + b1
    np.testing.assert_allclose(normalized_adjacency(splits.graph["edge_index"], NUM_NODES).to_dense().numpy(),
                               a_hat, rtol=0, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(model.encode(torch.arange(NUM_NODES)).numpy(), hidden, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(model(torch.arange(NUM_NODES)).numpy(), logits, rtol=1e-5, atol=1e-5)
    # the isolated node sees only itself: its embedding is its own MLP hidden row (degree 1)
    np.testing.assert_allclose(hidden[ISOLATED], np.maximum(x[ISOLATED] @ w0.T + b0, 0.0), atol=1e-12)


def test_layer_zero_is_the_feature_row_and_float_rows_take_the_shared_mlp(splits):
    model = _gcn(splits).eval()
    x = splits.graph["features"]
    idx = torch.tensor([5, 0, 530, 17])
    assert model.num_stages == 1 and model.pool(torch.ones(4, 16)).shape == (4, 16)
    assert torch.equal(model.encode(idx, 0, 0), x[idx])
    linear, head = model.stages[0].linear, model.head
    with torch.no_grad():
        hidden = F.relu(x[idx] @ linear.weight.T + linear.bias)
        torch.testing.assert_close(model.encode(x[idx], 0, 1), hidden)
        torch.testing.assert_close(model(x[idx]), hidden @ head.weight.T + head.bias)
        # integer inputs take the graph path for the whole range: layer 1 of a node is its propagated embedding
        torch.testing.assert_close(model.head(model.encode(model.encode(idx, 0, 1), 1)), model(idx))
        assert not torch.allclose(model(x[idx]), model(idx), atol=1e-3)  # the graph path propagates, the MLP not
        assert model.encode(idx).shape == (4, 16)


def test_dropout_acts_in_training_mode_only(splits):
    idx = torch.arange(50)
    model = _gcn(splits, dropout=0.5)
    with torch.no_grad():
        model.train()
        a, b = model(idx), model(idx)
        model.eval()
        c, d = model(idx), model(idx)
    assert not torch.allclose(a, b) and torch.equal(c, d)
    plain = _gcn(splits, dropout=0.0).train()
    with torch.no_grad():
        torch.testing.assert_close(plain(idx), plain.eval()(idx))


def test_node_indices_out_of_range_or_misplaced_are_refused(splits):
    model = _gcn(splits)
    for bad in (torch.tensor([0, NUM_NODES]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match=rf"\[0, {NUM_NODES}\)"):
            model(bad)
    with pytest.raises(ValueError, match="layer 0"):
        model.encode(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="layer 1"):
        model.encode(torch.tensor([0, 1]), 1)


def test_constructor_checks_the_graph(splits):
    x, edge_index = splits.graph["features"], splits.graph["edge_index"]
    with pytest.raises(ValueError, match="floating"):
        GCN(x.long(), edge_index, 3)
    with pytest.raises(ValueError, match="integer"):
        GCN(x, edge_index.float(), 3)
    with pytest.raises(ValueError, match=rf"\[0, {NUM_NODES}\)"):
        GCN(x, torch.cat([edge_index, torch.tensor([[0], [NUM_NODES]])], 1), 3)


def test_checkpoints_hold_the_weights_only_and_reload_exactly(splits, tmp_path):
    model, fresh = _gcn(splits, seed=0).eval(), _gcn(splits, seed=1).eval()
    state = model.state_dict()
    assert set(state) == PARAMETERS  # no features, adjacency or feature index
    assert {name for name, _ in model.named_buffers()} >= {"features", "adjacency"}
    idx = torch.arange(NUM_NODES)
    with torch.no_grad():
        assert not torch.allclose(fresh(idx), model(idx))
        torch.save(state, tmp_path / "gcn.pt")
        fresh.load_state_dict(torch.load(tmp_path / "gcn.pt", weights_only=True))
        assert torch.equal(fresh(idx), model(idx))
    assert (tmp_path / "gcn.pt").stat().st_size < 20_000  # the 560 × 24 features would not fit


def test_build_model_pairs_graph_models_with_graph_data(splits):
    model = build_model("gcn", num_classes=NUM_CLASSES, input_shape=(), width=7, input_dtype=torch.long,
                        graph=splits.graph)
    assert isinstance(model, GCN) and model.hidden == 7 and model.dropout == 0.5
    with pytest.raises(ValueError, match="graph data set"):
        build_model("gcn", num_classes=NUM_CLASSES, input_shape=(), input_dtype=torch.long)
    with pytest.raises(ValueError, match="needs a graph model"):
        build_model("mlp", num_classes=NUM_CLASSES, input_shape=(), input_dtype=torch.long, graph=splits.graph)


# ------------------------------------------------------------------ methods on nodes

METHOD_CASES = {
    "erm": ("erm", {}, False),
    "mixup": ("mixup", {"alpha": 1.0}, False),
    "manifold_mixup_0": ("manifold_mixup", {"layers": (0,)}, False),
    "manifold_mixup_1": ("manifold_mixup", {"layers": (1,)}, False),
    "manifold_mixup_01": ("manifold_mixup", {"layers": (0, 1)}, False),
    "mixupe": ("mixupe", {"eta": 0.1}, False),
    "multimix": ("multimix", {"n": 64}, False),
    "multimix_distill": ("multimix", {"n": 64}, True),
    "mixup_distill": ("mixup", {}, True),
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_every_node_method_gives_a_finite_loss_and_gradients_on_every_parameter(splits, case):
    name, args, distilled = METHOD_CASES[case]
    model = _gcn(splits).train()
    distill = SelfDistillation(model, warmup_steps=0, weight=0.5) if distilled else None
    method = create_method(name, num_classes=NUM_CLASSES, generator=torch.Generator().manual_seed(0),
                           distill=distill, **args)
    x, y = nodes_of(splits.train), labels_of(splits.train)
    loss = method(model, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name
    if distilled:  # the same draws with and without the teacher: its soft targets change the loss
        model.eval()
        with torch.no_grad():
            losses = [create_method(name, num_classes=NUM_CLASSES, generator=torch.Generator().manual_seed(0),
                                    distill=teacher, **args)(model, x, y) for teacher in (distill, None)]
        assert not torch.isclose(*losses)


def test_input_mixup_mixes_feature_rows_like_manifold_mixup_at_layer_zero(splits):
    model = _gcn(splits).train()
    x, y = nodes_of(splits.val)[:32], labels_of(splits.val)[:32]

    def loss_of(method):
        torch.manual_seed(5)  # the same dropout masks
        return method(model, x, y)

    seeded = lambda: torch.Generator().manual_seed(11)
    mixup = loss_of(InputMixup(alpha=0.7, num_classes=NUM_CLASSES, generator=seeded()))
    layer0 = loss_of(ManifoldMixup(alpha=0.7, layers=(0,), num_classes=NUM_CLASSES, generator=seeded()))
    layer1 = loss_of(ManifoldMixup(alpha=0.7, layers=(1,), num_classes=NUM_CLASSES, generator=seeded()))
    torch.testing.assert_close(mixup, layer0, rtol=0, atol=0)
    assert not torch.isclose(mixup, layer1)
    # by hand: λ and π from the same generator, feature rows mixed, the shared MLP (eval: no dropout)
    model.eval()
    g = seeded()
    lam = float(MF.sample_beta(0.7, generator=g))
    perm = MF.random_permutation(len(x), generator=g)
    rows = splits.graph["features"][x]
    mixed = lam * rows + (1 - lam) * rows[perm]
    linear = model.stages[0].linear
    logits = model.head(F.relu(mixed @ linear.weight.T + linear.bias))
    onehot = F.one_hot(y, NUM_CLASSES).float()
    want = MF.soft_cross_entropy(logits, lam * onehot + (1 - lam) * onehot[perm])
    got = InputMixup(alpha=0.7, num_classes=NUM_CLASSES, generator=seeded())(model, x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_self_distillation_moves_the_teachers_weights_and_leaves_its_graph_alone(splits):
    torch.manual_seed(0)  # a student on its own copy of the features (the model holds the tensor it is given)
    student = GCN(splits.graph["features"].clone(), splits.graph["edge_index"], NUM_CLASSES)
    distill = SelfDistillation(student, momentum=0.75, warmup_steps=0)
    teacher = distill.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    graph = {k: v.clone() for k, v in teacher.named_buffers()}
    with torch.no_grad():  # a student step, and a student whose (non-persistent) graph tensors changed
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student.features.mul_(3.0)
        student.feature_values.mul_(3.0)
    distill.update(student)
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * student.state_dict()[name])
        assert not torch.allclose(value, before[name]), name
    for name, value in teacher.named_buffers():
        if value.is_sparse:
            assert torch.equal(value.to_dense(), graph[name].to_dense()), name
        else:
            assert torch.equal(value, graph[name]), name
    assert torch.equal(teacher.features, splits.graph["features"])
    assert distill.predict(torch.tensor([0, 1, 2])).shape == (3, NUM_CLASSES)


# ------------------------------------------------------------------ the trainer, full batch, best validation

def gcn_config(cora, out: Path, **kw) -> TrainConfig:
    base = dict(dataset="planetoid:Cora", data_dir=str(cora.root), model="gcn", batch_size=None, optimizer="adam",
                lr=0.1, weight_decay=5e-4, epochs=8, schedule="constant", select="best_val", device="cpu",
                progress=False, out_dir=str(out))
    base.update(kw)
    return TrainConfig(**base)


TIMING = ("epoch_time_s", "examples_per_s")


def _untimed(row):
    return {k: v for k, v in row.items() if k not in TIMING}


BEST_VAL_SEED, BEST_EPOCH = 1, 5  # a seed whose best validation epoch is not the last of 8: selection matters


@pytest.fixture(scope="module")
def best_val_run(cora, tmp_path_factory):
    out = tmp_path_factory.mktemp("gcn_run") / "run"
    trainer = Trainer(gcn_config(cora, out, seed=BEST_VAL_SEED))
    summary = trainer.run()
    return trainer, summary, out


def test_full_batch_adam_run_selects_the_best_validation_epoch(best_val_run):
    trainer, summary, out = best_val_run
    assert summary["status"] == "completed" and summary["epochs_completed"] == 8
    assert trainer.batch_size == NUM_LABELLED and trainer.steps_per_epoch == 1
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    history = trainer.history
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert all(row["lr"] == 0.1 for row in history)  # constant schedule
    best = history[0]
    for row in history[1:]:  # the first epoch of the highest val accuracy, ties to the lower val loss
        if (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"]):
            best = row
    assert summary["selected"] == best and summary["final"] == history[-1]
    assert best["epoch"] != 8 and best["val_accuracy"] > history[-1]["val_accuracy"]  # selection matters here
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["selected"]["epoch"] == best["epoch"] and on_disk["final"]["epoch"] == 8


def test_ties_in_validation_accuracy_go_to_the_lower_loss_and_the_first_epoch(cora, tmp_path):
    trainer = Trainer(gcn_config(cora, tmp_path / "run"))
    trainer.model = torch.nn.Linear(2, 1)
    snapshots = {}
    for epoch, (accuracy, loss) in enumerate([(50.0, 1.0), (60.0, 0.9), (60.0, 0.8), (60.0, 0.85), (60.0, 0.8),
                                               (40.0, 0.1)], start=1):
        with torch.no_grad():
            trainer.model.weight.fill_(epoch)
        snapshots[epoch] = trainer.model.weight.clone()
        trainer.track_best({"epoch": epoch, "val_accuracy": accuracy, "val_loss": loss, "test_accuracy": 0.0})
        trainer.history.append({"epoch": epoch})
    assert trainer.selected["epoch"] == 3
    assert torch.equal(trainer.best["state"]["weight"], snapshots[3])
    last = Trainer(gcn_config(cora, tmp_path / "last", select="last"))
    last.model = torch.nn.Linear(2, 1)
    last.track_best({"epoch": 1, "val_accuracy": 90.0, "val_loss": 0.1})
    last.history.append({"epoch": 1, "val_accuracy": 90.0})
    last.history.append({"epoch": 2, "val_accuracy": 10.0})
    assert last.best is None and last.selected["epoch"] == 2


def test_the_trained_model_is_the_selected_epochs_model(best_val_run, cora, tmp_path):
    trainer, summary, out = best_val_run
    selected, final = summary["selected"], summary["final"]
    val = evaluate(trainer.model, trainer.splits.val)
    test = evaluate(trainer.model, trainer.splits.test)
    assert val["accuracy"] == pytest.approx(selected["val_accuracy"], abs=1e-9)
    assert val["loss"] == pytest.approx(selected["val_loss"], rel=1e-5)
    assert test["accuracy"] == pytest.approx(selected["test_accuracy"], abs=1e-9)
    # last.pt keeps the last epoch's weights (what --resume continues from)
    last = GCN(trainer.splits.graph["features"], trainer.splits.graph["edge_index"], NUM_CLASSES)
    last.load_state_dict(load_checkpoint(out / "last.pt")["model"])
    assert evaluate(last, trainer.splits.val)["accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-9)
    # an independent replay: a run of only `selected` epochs (the constant schedule does not depend on their number)
    replay = Trainer(gcn_config(cora, tmp_path / "replay", seed=BEST_VAL_SEED, epochs=selected["epoch"],
                                select="last"))
    replay.run()
    for name, value in replay.model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name


@pytest.mark.parametrize("stop", [3, BEST_EPOCH])  # before the best epoch, and at it: the best must come from last.pt
def test_resuming_a_best_val_run_selects_the_same_epoch(best_val_run, cora, tmp_path, stop):
    trainer, summary, _ = best_val_run
    assert summary["selected"]["epoch"] == BEST_EPOCH
    first = Trainer(gcn_config(cora, tmp_path / "split", seed=BEST_VAL_SEED, stop_after_epochs=stop)).run()
    assert first["status"] == "stopped" and first["epochs_completed"] == stop
    resumed_trainer = Trainer(gcn_config(cora, tmp_path / "split", seed=BEST_VAL_SEED, resume=True))
    resumed = resumed_trainer.run()
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 8
    assert _untimed(resumed["selected"]) == _untimed(summary["selected"])
    assert [_untimed(r) for r in resumed_trainer.history] == [_untimed(r) for r in trainer.history]
    for name, value in resumed_trainer.model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name


def test_load_trained_gives_the_selected_model_of_a_best_val_run(best_val_run):
    from multimix.engine import load_trained

    trainer, summary, out = best_val_run
    _, splits, model = load_trained(out / "last.pt")
    assert evaluate(model, splits.val)["accuracy"] == pytest.approx(summary["selected"]["val_accuracy"], abs=1e-9)


def test_bench_reports_the_best_validation_epoch_of_a_best_val_recipe(best_val_run, cora, tmp_path, capsys):
    """``bench`` evaluates once per run to save time, except where the recipe selects the best validation epoch:
    there it keeps the recipe's per-epoch evaluations, so its number is the trainer's selected epoch, not the last."""
    import yaml

    from multimix.cli import main

    trainer, summary, _ = best_val_run
    recipe = {k: v for k, v in dataclasses.asdict(trainer.config).items()
              if k in ("dataset", "model", "batch_size", "optimizer", "lr", "weight_decay", "epochs", "schedule",
                       "select", "seed", "eval_every")}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["bench", "--config", str(tmp_path / "recipe.yaml"), "--data-dir", str(cora.root), "--methods", "ERM",
                 "--seeds", "1", "--first-seed", str(trainer.config.seed), "--out-dir", str(tmp_path / "bench")])
    assert code == 0
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["setting"]["eval_every"] == trainer.config.eval_every == 1
    (run,) = results["runs"]
    assert run["epoch"] == summary["selected"]["epoch"] != 8
    assert run["test_accuracy"] == pytest.approx(summary["selected"]["test_accuracy"], abs=1e-9)
    assert run["test_accuracy_last"] == pytest.approx(summary["final"]["test_accuracy"], abs=1e-9)
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "at the best validation epoch" in table and "last epoch (%)" in table
    assert f"{summary['final']['test_accuracy']:.2f} |" in table.splitlines()[4]  # the ERM row's last column
    assert "Not measured here: attacks" in table and "FGSM" not in table


@pytest.mark.parametrize("name, args, distill", [
    ("mixup", {}, None),
    ("manifold_mixup", {"layers": [0, 1]}, None),
    ("multimix", {"n": 32}, {"warmup_steps": 2}),
])
def test_mixing_methods_train_a_gcn_end_to_end(cora, tmp_path, name, args, distill):
    summary = Trainer(gcn_config(cora, tmp_path / "run", epochs=2, method=name, method_args=args,
                                 distill=distill)).run()
    assert summary["status"] == "completed" and summary["selected"]["epoch"] in (1, 2)
    assert all(np.isfinite(summary["final"][k]) for k in ("train_loss", "val_loss", "test_loss"))


def test_the_bundled_recipe_trains_on_the_fixture(cora, tmp_path):
    recipe = load_recipe("cora_gcn")
    assert recipe["dataset"] == "planetoid:Cora" and recipe["batch_size"] is None and recipe["select"] == "best_val"
    config = TrainConfig.from_dict({**recipe, "epochs": 2, "data_dir": str(cora.root), "out_dir": str(tmp_path / "r"),
                                    "progress": False, "device": "cpu"})
    trainer = Trainer(config)
    summary = trainer.run()
    assert summary["status"] == "completed" and trainer.steps_per_epoch == 1
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.optimizer.defaults["lr"] == 0.01


def test_best_val_needs_a_validation_split(tmp_path, tiny):
    with pytest.raises(ValueError, match="val_size") as err:
        Trainer(tiny(tmp_path, select="best_val", val_size=0)).prepare()
    assert "best_val" in _one_line(err)


@pytest.mark.parametrize("name, args", [("cutmix", {}), ("dense_multimix", {"n": 8}), ("mixupe", {"base": "cutmix"})])
def test_methods_that_need_positions_are_refused_on_nodes(cora, tmp_path, name, args):
    with pytest.raises(ValueError, match="needs inputs with positions") as err:
        Trainer(gcn_config(cora, tmp_path / "run", method=name, method_args=args)).prepare()
    assert "()" in _one_line(err)


def test_models_and_data_must_agree_on_graphs(cora, tmp_path, tiny):
    with pytest.raises(ValueError, match="needs a graph model"):
        Trainer(gcn_config(cora, tmp_path / "a", model="mlp")).prepare()
    with pytest.raises(ValueError, match="graph data set"):
        Trainer(tiny(tmp_path, model="gcn", out_dir=str(tmp_path / "b"))).prepare()


def test_report_on_a_gcn_skips_attacks_and_the_default_ood_set(best_val_run):
    trainer, summary, _ = best_val_run
    result = report(trainer.model, trainer.splits)
    assert {"accuracy", "ece", "alignment", "uniformity", "class_distance_ratio", "_predictions"} <= set(result)
    assert not {"pgd_error", "fgsm_error", "clean_error", "eps"} & set(result)
    assert not [k for k in result if "auroc" in k or "fpr95" in k]
    assert result["accuracy"] == pytest.approx(summary["selected"]["test_accuracy"], abs=1e-4)  # float32 mean
    assert all(np.isfinite(result[k]) for k in ("ece", "alignment", "uniformity", "class_distance_ratio"))
    assert result["_predictions"]["embeddings"].shape == (NUM_TEST, 16)


@pytest.mark.parametrize("graph", ["CiteSeer", "PubMed"])
def test_citeseer_and_pubmed_load_through_the_same_code(cora, splits, tmp_path, graph):
    raw = tmp_path / graph / "raw"
    raw.mkdir(parents=True)
    for path in (cora.root / "Cora" / "raw").iterdir():
        shutil.copy(path, raw / path.name.replace("ind.cora.", f"ind.{graph.lower()}."))
    other = load_dataset(f"planetoid:{graph.lower()}", data_dir=str(tmp_path))
    for name in ("train", "val", "test"):
        assert torch.equal(nodes_of(getattr(other, name)), nodes_of(getattr(splits, name))), name
        assert torch.equal(labels_of(getattr(other, name)), labels_of(getattr(splits, name))), name
    assert torch.equal(other.graph["features"], splits.graph["features"])
    assert torch.equal(other.graph["edge_index"], splits.graph["edge_index"])


def test_unlabelled_batches_ramp_up_over_the_teachers_warm_up(cora, splits, tmp_path, monkeypatch):
    from multimix.methods import UNLABELLED

    seen = []
    config = gcn_config(cora, tmp_path / "semi", epochs=4, method="multimix", method_args={"n": 32},
                        distill={"momentum": 0.9, "temperature": 0.5, "weight": 0.0, "warmup_steps": 2},
                        unlabelled_batch=20, checkpoint=False)
    trainer = Trainer(config)
    call = trainer.with_unlabelled

    def spy(x, y):
        x, y = call(x, y)
        seen.append((x.clone(), y.clone()))
        return x, y

    monkeypatch.setattr(trainer, "with_unlabelled", spy)
    summary = trainer.run()
    assert summary["status"] == "completed"
    labelled = len(splits.train)
    # updates before each step: 0, 1, 2, 3 of a 2-step warm-up -> 0, 10, 20, 20 unlabelled nodes
    assert [len(y) - labelled for _, y in seen] == [0, 10, 20, 20]
    pool = set(splits.unlabelled.tolist())
    train_nodes = set(nodes_of(splits.train).tolist())
    for x, y in seen:
        extra = x[labelled:].tolist()
        assert (y[labelled:] == UNLABELLED).all() and set(extra) <= pool and not set(extra) & train_nodes
        assert (y[:labelled] >= 0).all()


def test_a_consistency_weight_trains_unlabelled_nodes_by_consistency(cora, tmp_path, monkeypatch):
    """GraphMix's form: the method sees the labelled nodes only, the teacher's consistency loss the others."""
    from multimix.methods import SelfDistillation

    sizes = []
    consistency = SelfDistillation.consistency

    def spy(self, model, x):
        sizes.append(len(x))
        return consistency(self, model, x)

    monkeypatch.setattr(SelfDistillation, "consistency", spy)
    config = gcn_config(cora, tmp_path / "semi", epochs=3, method="multimix", method_args={"n": 32},
                        distill={"temperature": 0.1, "weight": 0.0, "warmup_steps": 1, "consistency_weight": 10.0},
                        unlabelled_batch=20, checkpoint=False)
    summary = Trainer(config).run()
    assert summary["status"] == "completed" and np.isfinite(summary["final"]["train_loss"])
    assert sizes == [20, 20]  # no unlabelled nodes in the first step (warm-up 0 of 1), then 20 per step


def test_unlabelled_batch_needs_a_teacher_and_unlabelled_data(cora, tmp_path):
    with pytest.raises(ValueError, match="unlabelled_batch .* needs distill"):
        gcn_config(cora, tmp_path / "a", unlabelled_batch=8).validate()
    mnist = TrainConfig(dataset="mnist1d", data_dir=str(tmp_path / "m"), num_train=64, num_test=32, epochs=1,
                        batch_size=16, distill={}, unlabelled_batch=8, progress=False, out_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="mnist1d has no unlabelled examples"):
        Trainer(mnist).prepare()


def test_only_the_first_gcn_layer_is_weight_decayed(cora, tmp_path):
    from multimix.engine.build import parameter_groups

    trainer = Trainer(gcn_config(cora, tmp_path / "wd", checkpoint=False)).prepare()
    groups = trainer.optimizer.param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 5e-4 for p in g["params"]}
    free = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    model = trainer.model
    assert decayed == {id(p) for p in model.stages.parameters()}
    assert free == {id(p) for p in model.head.parameters()}
    plain = torch.nn.Linear(3, 2)
    assert [len(g["params"]) for g in parameter_groups(plain, 0.1)] == [2]  # no no_weight_decay(): one group
    plain.no_weight_decay = lambda: {"bias", "scale"}
    with pytest.raises(ValueError, match=r"unknown parameters \['scale'\]"):
        parameter_groups(plain, 0.1)


# ------------------------------------------------------------------ untrusted raw files

class Payload:
    """Unpickles as ``os.system(command)``: what a crafted Planetoid file can carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def _dump(raw: Path, name: str, obj, protocol: int = 4) -> None:
    with open(raw / f"ind.cora.{name}", "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _load(raw: Path, name: str):
    with open(raw / f"ind.cora.{name}", "rb") as f:
        return pickle.load(f, encoding="latin1")


def _graph_with_payload(raw: Path, marker: Path) -> None:
    graph = _load(raw, "graph")
    graph[5].append(Payload(f"touch '{marker}'"))  # inside a neighbour list, as a real attack would hide it
    _dump(raw, "graph", graph, protocol=2)


def test_a_graph_pickle_carrying_code_is_refused_and_the_code_never_runs(cora_copy, tmp_path):
    import os
    import subprocess
    import sys

    raw = cora_copy / "Cora" / "raw"
    marker = tmp_path / "payload-ran"
    _graph_with_payload(raw, marker)
    with pytest.raises(ValueError) as err:
        planetoid(cora_copy, "Cora")
    message = _one_line(err)
    assert str(raw / "ind.cora.graph") in message and "refused to unpickle" in message and "system" in message
    assert not marker.exists()
    # the command line in a process of its own: exit 2 in one line before any training, and still nothing ran
    done = subprocess.run([sys.executable, "-m", "multimix.cli", "train", "--dataset", "planetoid:Cora", "--data-dir",
                           str(cora_copy), "--model", "gcn", "--epochs", "1", "--no-progress", "--out-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    stderr = done.stderr.strip()
    assert done.returncode == 2 and "\n" not in stderr, stderr
    assert stderr.startswith(f"multimix train: error: {raw / 'ind.cora.graph'}: refused to unpickle "
                             f"'{os.system.__module__}.system'")  # posix.system, or nt.system on Windows
    assert not marker.exists() and not (tmp_path / "run" / "last.pt").exists()
    # the file is a working attack: PyTorch Geometric's own reader runs it
    geometric = pytest.importorskip("torch_geometric.io")
    try:
        geometric.read_planetoid_data(str(raw), "cora")
    except Exception:
        pass  # the payload's return value is no node id; what matters is that it ran
    assert marker.exists()


def test_download_fetches_only_the_missing_files_and_never_unpickles_with_pyg(cora, cora_copy, tmp_path, monkeypatch):
    """Before, --download handed the folder to PyG's Planetoid class, which unpickled whatever files it found."""
    import torch_geometric.data

    raw = cora_copy / "Cora" / "raw"
    marker = tmp_path / "payload-ran"
    _graph_with_payload(raw, marker)
    (raw / "ind.cora.ty").unlink()
    fetched = []

    def fake_download(url, folder, log=True, filename=None):  # the network, served from the fixture's files
        name = url.rsplit("/", 1)[1]
        fetched.append(url)
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(cora.root / "Cora" / "raw" / name, Path(folder) / name)
        return str(Path(folder) / name)

    monkeypatch.setattr(torch_geometric.data, "download_url", fake_download)
    with pytest.raises(ValueError, match="refused to unpickle"):
        planetoid(cora_copy, "Cora", download=True)
    assert fetched == ["https://github.com/kimiyoung/planetoid/raw/master/data/ind.cora.ty"]
    assert not marker.exists() and not (cora_copy / "Cora" / "processed").exists()
    empty = tmp_path / "empty"
    splits = planetoid(empty, "Cora", download=True)  # all eight fetched into empty/Cora/raw
    assert len(fetched) == 9 and len(splits.test) == NUM_TEST
    assert sorted(p.name for p in (empty / "Cora").iterdir()) == ["raw"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_restricted_reader_gives_pytorch_geometrics_data(cora_copy, protocol):
    """Every pickle protocol (the originals are protocol 2 from Python 2), the same tensors as PyG's reader."""
    from torch_geometric.io import read_planetoid_data

    from multimix.data.graph import read_planetoid

    raw = cora_copy / "Cora" / "raw"
    for name in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        _dump(raw, name, _load(raw, name), protocol=protocol)
    ours, _ = read_planetoid(raw, "Cora")
    theirs = read_planetoid_data(str(raw), "cora")
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(ours, key), getattr(theirs, key)), key


def test_citeseers_gaps_in_the_test_range_match_pytorch_geometric(cora, tmp_path):
    """CiteSeer's test range has isolated nodes without a tx row: they get zero rows, as in PyG's reader."""
    from torch_geometric.io import read_planetoid_data

    from multimix.data.graph import read_planetoid

    raw = tmp_path / "CiteSeer" / "raw"
    raw.mkdir(parents=True)
    for path in (cora.root / "Cora" / "raw").iterdir():
        shutil.copy(path, raw / path.name.replace("ind.cora.", "ind.citeseer."))
    order = cora.test_index
    keep = np.array([node not in (NUM_ALLX + 3, NUM_ALLX + 17) for node in order])  # neither end of the range
    for name in ("tx", "ty"):
        with open(raw / f"ind.citeseer.{name}", "rb") as f:
            rows = pickle.load(f)
        with open(raw / f"ind.citeseer.{name}", "wb") as f:
            pickle.dump(rows[np.flatnonzero(keep)], f)
    (raw / "ind.citeseer.test.index").write_text("".join(f"{i}\n" for i in order[keep]))
    ours, _ = read_planetoid(raw, "CiteSeer")
    theirs = read_planetoid_data(str(raw), "citeseer")
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(ours, key), getattr(theirs, key)), key
    assert ours.x[NUM_ALLX + 3].abs().sum() == 0 and int(ours.test_mask.sum()) == NUM_TEST - 2
    splits = load_dataset("planetoid:citeseer", data_dir=str(tmp_path))
    assert len(splits.test) == NUM_TEST - 2


@pytest.mark.parametrize("line, value, expected", [
    (3, "-5", r"line 3: node -5 is negative"),
    (4, "<line 2>", r"line 4: node \d+ is listed again \(first on line 2\)"),
    (5, str(NUM_NODES + 3), rf"line 5: node {NUM_NODES + 3} is outside \[{NUM_ALLX}, {NUM_NODES}\)"),
    (6, "7", rf"line 6: node 7 is outside \[{NUM_ALLX}, {NUM_NODES}\)"),  # a training node's place
])
def test_bad_test_index_entries_are_refused_naming_the_line(cora_copy, line, value, expected):
    index = cora_copy / "Cora" / "raw" / "ind.cora.test.index"
    lines = index.read_text().split()
    lines[line - 1] = lines[1] if value == "<line 2>" else value
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=expected) as err:
        planetoid(cora_copy, "Cora")
    assert str(index) in _one_line(err)


@pytest.mark.parametrize("node, neighbour, expected", [
    (3, -2, "node 3 has neighbour -2, which is negative"),
    (3, NUM_NODES, f"node 3 has neighbour {NUM_NODES}, which is out of range"),
    (-1, 4, "node -1 is negative"),
])
def test_neighbour_ids_outside_the_graph_are_refused(cora_copy, node, neighbour, expected):
    raw = cora_copy / "Cora" / "raw"
    graph = _load(raw, "graph")
    graph[node].append(neighbour)
    _dump(raw, "graph", graph, protocol=2)
    with pytest.raises(ValueError) as err:
        planetoid(cora_copy, "Cora")
    message = _one_line(err)
    assert str(raw / "ind.cora.graph") in message and expected in message and f"[0, {NUM_NODES})" in message


@pytest.mark.parametrize("name, row, value, expected", [
    ("allx", 17, np.nan, "row 17: column 3 is not finite (nan)"),
    ("tx", 2, np.inf, "row 2: column 3 is not finite (inf)"),
    ("x", 1, -3e9, "row 1: column 3 is -3e+09, beyond the ±1e+06 accepted"),
])
def test_non_finite_or_absurd_node_features_are_refused_naming_file_and_row(cora_copy, name, row, value, expected):
    raw = cora_copy / "Cora" / "raw"
    features = _load(raw, name).toarray()
    features[row, 3] = value
    _dump(raw, name, sp.csr_matrix(features))
    with pytest.raises(ValueError) as err:
        planetoid(cora_copy, "Cora")
    assert _one_line(err) == f"{raw / f'ind.cora.{name}'} {expected}" + (
        "" if np.isnan(value) or np.isinf(value) else " (a corrupt value?)")


def test_sparse_matrices_are_rebuilt_and_checked(cora_copy):
    raw = cora_copy / "Cora" / "raw"
    broken = _load(raw, "allx")
    broken.indices[0] = NUM_FEATURES + 100  # a column beyond the declared shape, set past scipy's checks
    _dump(raw, "allx", broken)
    with pytest.raises(ValueError, match=r"ind\.cora\.allx: not a valid sparse matrix") as err:
        planetoid(cora_copy, "Cora")
    _one_line(err)
    _dump(raw, "allx", sp.csr_matrix((10 ** 6, 10 ** 6), dtype=np.float32))  # a tiny file, a 4 TB dense matrix
    with pytest.raises(ValueError, match=r"ind\.cora\.allx: a 1000000 x 1000000 matrix, more than") as err:
        planetoid(cora_copy, "Cora")
    _one_line(err)


def test_the_fingerprint_identifies_the_raw_files(cora, splits, cora_copy):
    assert isinstance(splits.fingerprint, str) and len(splits.fingerprint) == 16
    int(splits.fingerprint, 16)
    assert planetoid(cora.root, "Cora", num_train=3, seed=4).fingerprint == splits.fingerprint
    assert load_dataset("planetoid:Cora", data_dir=str(cora.root / "Cora" / "raw")).fingerprint == splits.fingerprint
    assert planetoid(cora_copy, "Cora").fingerprint == splits.fingerprint  # a copy elsewhere: the same data
    raw = cora_copy / "Cora" / "raw"
    features = _load(raw, "tx").toarray()
    features[0, 0] = 1.0 - features[0, 0]  # one word of one test node
    _dump(raw, "tx", sp.csr_matrix(features))
    assert planetoid(cora_copy, "Cora").fingerprint != splits.fingerprint
