"""GraphMix (methods/graphmix.py) and the GCN of its official code (models/gcn.py), against plain references.

The graph is the tiny Planetoid fixture of test_graph.py (560 nodes in the real raw format); no real data.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric")
pytest.importorskip("scipy.sparse")

from test_graph import NUM_CLASSES, cora, splits  # noqa: E402,F401  (the tiny graph's fixtures)

from multimix import functional as MF  # noqa: E402
from multimix.engine import Trainer, TrainConfig  # noqa: E402
from multimix.engine.config import load_recipe  # noqa: E402
from multimix.losses import softmax_bce  # noqa: E402
from multimix.methods import UNLABELLED, GraphMix, create_method  # noqa: E402
from multimix.methods.graphmix import sharpen, sigmoid_ramp  # noqa: E402
from multimix.models import GCN, graphmix_gcn  # noqa: E402
from multimix.models.gcn import normalized_adjacency  # noqa: E402


def official_gcn(splits, seed=0) -> GCN:
    torch.manual_seed(seed)
    return graphmix_gcn(NUM_CLASSES, features=splits.graph["features"], edge_index=splits.graph["edge_index"])


# ------------------------------------------------------------------ pieces against their formulas

def test_the_ramp_is_laine_and_ailas_sigmoid_over_the_steps():
    # GraphMix's get_current_consistency_weight: sigmoid_rampup(epoch − start, end − start)
    def official(step, start, end):
        current = np.clip(step - start, 0.0, end - start)
        return float(np.exp(-5.0 * (1.0 - current / (end - start)) ** 2))

    for step in (0, 499, 500, 501, 750, 999, 1000, 1999):
        assert sigmoid_ramp(step, 500, 1000) == pytest.approx(official(step, 500, 1000), rel=1e-12)
    assert sigmoid_ramp(0, 500, 1000) == pytest.approx(math.exp(-5))
    assert sigmoid_ramp(3, 7, 7) == 1.0  # no ramp


def test_sharpen_is_p_to_the_one_over_t_renormalised():
    probs = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    for t in (0.1, 0.5, 1.0, 2.0):
        reference = probs ** (1 / t) / (probs ** (1 / t)).sum(-1, keepdim=True)
        torch.testing.assert_close(sharpen(probs, t).double(), reference, rtol=1e-5, atol=1e-7)
    assert torch.equal(sharpen(probs, 0.1).argmax(-1), probs.argmax(-1))
    tiny = torch.tensor([[1e-30, 1.0 - 1e-30, 0.0]])  # p^10 underflows float32 directly; log space does not
    assert torch.isfinite(sharpen(tiny, 0.01)).all() and sharpen(tiny, 0.01)[0, 1] == 1.0


def test_softmax_bce_is_bce_of_the_softmax_probabilities():
    logits, targets = torch.randn(7, 4) * 3, torch.softmax(torch.randn(7, 4), -1)
    torch.testing.assert_close(softmax_bce(logits, targets).mean(), F.binary_cross_entropy(torch.softmax(logits, -1),
                                                                                           targets))
    saturated = torch.tensor([[80.0, 0.0, 0.0]], requires_grad=True)  # p = 1 exactly in float32
    loss = softmax_bce(saturated, torch.tensor([[1.0, 0.0, 0.0]])).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(saturated.grad).all()


# ------------------------------------------------------------------ the official GCN and the sparse products

def test_graphmix_gcn_is_the_official_architecture(splits):
    model = official_gcn(splits)
    assert model.head.bias is None and model.stages[0].linear.bias is None
    assert model.no_weight_decay() == set() and model.hidden_dropout == 0.0 and model.dropout == 0.5
    for linear in (model.stages[0].linear, model.head):  # U(±1/√out), as layer.py's reset_parameters
        bound = linear.out_features ** -0.5
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.8 * bound
    default = GCN(splits.graph["features"], splits.graph["edge_index"], NUM_CLASSES)
    assert default.no_weight_decay() == {"head.weight", "head.bias"} and default.hidden_dropout == 0.5


def test_gcn_gradients_equal_autograds_through_dense_matrices_on_a_directed_graph(splits):
    """The CSR products' backward uses Xᵀ and Âᵀ built once: on a directed graph (Â ≠ Âᵀ) and under dropout
    (one mask shared by X and Xᵀ), the gradients equal the numerical ones (gradcheck, float64)."""
    n = splits.graph["features"].shape[0]
    generator = torch.Generator().manual_seed(0)
    directed = torch.randint(n, (2, 900), generator=generator)
    model = GCN(splits.graph["features"], directed, NUM_CLASSES, hidden=4, dropout=0.3).double().train()
    with torch.no_grad():  # zero biases put featureless nodes exactly on ReLU's kink, where gradcheck's sides differ
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.1)
    nodes = torch.arange(0, n, 7)
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())

    def loss(*weights):
        torch.manual_seed(5)  # the same dropout masks at every evaluation
        return torch.func.functional_call(model, dict(zip(names, weights)), (nodes,)).logsumexp(-1).sum()

    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(loss, weights, eps=1e-6, atol=1e-5)
    # and without dropout, against products with dense Â and X
    model.eval()
    a = normalized_adjacency(directed, n).to_dense().double()
    x = splits.graph["features"].double()
    w0, b0 = model.stages[0].linear.weight, model.stages[0].linear.bias
    reference = a @ torch.relu(a @ x @ w0.T + b0)
    reference = (reference @ model.head.weight.T + model.head.bias)[nodes]
    grads = torch.autograd.grad(reference.logsumexp(-1).sum(), params)
    ours = torch.autograd.grad(model(nodes).logsumexp(-1).sum(), params)
    for g, r in zip(ours, grads):
        torch.testing.assert_close(g, r)


# ------------------------------------------------------------------ the method

def _batch(splits, unlabelled=8):
    x, y = splits.train.tensors
    pool = splits.unlabelled[:unlabelled]
    return torch.cat([x, pool]), torch.cat([y, torch.full((len(pool),), UNLABELLED)])


def test_a_pairwise_mix_step_is_manifold_mixup_of_the_mlp_paths_hidden_layer(splits):
    model = official_gcn(splits).eval()  # no dropout: the arithmetic alone
    method = GraphMix(step_choice="sum", generator=torch.Generator().manual_seed(3))
    x, y = splits.train.tensors
    terms = {t.name: t for t in method.terms(model, x, y)}
    assert set(terms) == {"clean", "mixed"}  # no unlabelled nodes in this batch
    replay = torch.Generator().manual_seed(3)  # the draws in the method's order: λ, then π
    lam = float(MF.sample_beta(1.0, generator=replay))
    perm = MF.random_permutation(len(x), generator=replay)
    hidden = torch.relu(splits.graph["features"][x] @ model.stages[0].linear.weight.T)  # no Â: the FCN
    mixed = lam * hidden + (1 - lam) * hidden[perm]
    onehot = F.one_hot(y, NUM_CLASSES).float()
    with torch.no_grad():
        torch.testing.assert_close(terms["mixed"].logits, mixed @ model.head.weight.T)
        torch.testing.assert_close(terms["clean"].logits, model(x))
    torch.testing.assert_close(terms["mixed"].targets, lam * onehot + (1 - lam) * onehot[perm])
    assert terms["mixed"].criterion is softmax_bce and terms["clean"].criterion is None


def test_unlabelled_targets_average_k_dropout_predictions_of_the_gcn_and_sharpen_them(splits):
    model = official_gcn(splits).train()
    method = GraphMix(predictions=10, temperature=0.1)
    nodes = splits.unlabelled[:20]
    torch.manual_seed(11)
    ours = method.predicted_targets(model, nodes)
    torch.manual_seed(11)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(model(nodes), -1) for _ in range(10)]).mean(0)
    torch.testing.assert_close(ours, mean ** 10 / (mean ** 10).sum(-1, keepdim=True), rtol=1e-4, atol=1e-6)
    torch.manual_seed(12)
    single = GraphMix(predictions=1, temperature=1.0).predicted_targets(model, nodes)
    assert not torch.allclose(single, ours)  # dropout: K samples differ from one


def test_the_coin_chooses_each_step_with_probability_one_half_and_gamma_follows_the_ramp(splits):
    model = official_gcn(splits).train()
    method = GraphMix(generator=torch.Generator().manual_seed(0), unlabelled_weight=10.0, ramp_start=500,
                      ramp_end=1000, predictions=2)
    x, y = _batch(splits)
    kinds = []
    for step in range(400):
        method.steps = step * 5
        names = [t.name for t in method.terms(model, x, y)]
        assert names in (["clean"], ["mixed", "unlabelled"])
        if names == ["mixed", "unlabelled"]:
            weight = method.terms.__self__.current_unlabelled_weight
            assert weight == pytest.approx(10.0 * sigmoid_ramp(step * 5, 500, 1000))
        kinds.append(names == ["clean"])
    share = np.mean(kinds)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 400), share  # Binomial(400, 1/2) within 4σ


def test_the_unlabelled_term_weighs_gamma_of_the_step_and_mixes_predicted_targets(splits):
    model = official_gcn(splits).eval()
    method = GraphMix(step_choice="sum", generator=torch.Generator().manual_seed(1), predictions=1,
                      temperature=0.5)
    method.steps = 750
    x, y = _batch(splits)
    terms = {t.name: t for t in method.terms(model, x, y)}
    assert terms["unlabelled"].weight == pytest.approx(10.0 * math.exp(-5 * 0.25))
    assert terms["unlabelled"].logits.shape == (8, NUM_CLASSES)
    torch.testing.assert_close(terms["unlabelled"].targets.sum(-1), torch.ones(8))
    assert terms["mixed"].logits.shape == (len(splits.train), NUM_CLASSES)


def test_multimix_inside_graphmix_mixes_n_dirichlet_tuples_exactly_in_logit_space(splits):
    model = official_gcn(splits).eval()
    for path in ("mlp", "gcn"):
        method = GraphMix(mixer="multimix", n=50, concentration=2.0, path=path, step_choice="sum",
                          generator=torch.Generator().manual_seed(4))
        x, y = splits.train.tensors
        terms = {t.name: t for t in method.terms(model, x, y)}
        replay = torch.Generator().manual_seed(4)
        lam = MF.dirichlet(50, len(x), 2.0 / len(x), generator=replay)
        with torch.no_grad():
            z = method.embed(model, x)
            torch.testing.assert_close(terms["mixed"].logits, model.head(lam @ z), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(terms["mixed"].targets, lam @ F.one_hot(y, NUM_CLASSES).float())
    with torch.no_grad():  # the two paths embed differently: the MLP has no Â
        gcn_path = GraphMix(path="gcn").embed(model, x)
        mlp_path = GraphMix(path="mlp").embed(model, x)
        torch.testing.assert_close(gcn_path, model.encode(x))
        assert not torch.allclose(gcn_path, mlp_path)


def test_the_masked_step_is_the_split_step_with_the_same_draws(splits):
    """Off the host GraphMix keeps its parts as masks of the batch (no size read back). With the draws replayed
    (λ, then the within-part pairing, for each part), its loss and gradients equal the split step's formulas:
    the mean over the labelled nodes of the clean and mixed losses, and γ times the unlabelled nodes' mean."""
    model = official_gcn(splits).eval()  # no dropout: the arithmetic alone
    method = GraphMix(step_choice="sum", generator=torch.Generator().manual_seed(6), predictions=1,
                      temperature=0.5)
    method.steps = 750
    x, y = _batch(splits)
    unlabelled = y == UNLABELLED
    with MF.device_generic():
        loss = method.reduce(method.terms(model, x, y))
        replay = torch.Generator().manual_seed(6)
        draws = [(MF.sample_beta(1.0, generator=replay), MF.permutation_within(part, generator=replay))
                 for part in (~unlabelled, unlabelled)]
    hidden = torch.relu(splits.graph["features"][x] @ model.stages[0].linear.weight.T)  # the MLP path
    head = model.head
    onehot = F.one_hot(y.clamp_min(0), NUM_CLASSES).float()
    with torch.no_grad():
        predicted = sharpen(torch.softmax(model(x[unlabelled]), -1), 0.5)
    reference = MF.soft_cross_entropy(model(x[~unlabelled]), onehot[~unlabelled])
    for (lam, perm), part, targets, weight in zip(draws, (~unlabelled, unlabelled), (onehot, None), (1.0, None)):
        rows = torch.nonzero(part).flatten()
        partner = perm[rows]
        assert part[partner].all()
        if targets is None:  # the unlabelled part: the sharpened predictions, in the part's row order
            targets = torch.zeros_like(onehot)
            targets[rows] = predicted
            weight = 10.0 * math.exp(-5 * 0.25)
        mixed = head(lam * hidden[rows] + (1 - lam) * hidden[partner])
        reference = reference + weight * softmax_bce(mixed, lam * targets[rows] + (1 - lam) * targets[partner]).mean()
    torch.testing.assert_close(loss, reference)
    ours = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.autograd.grad(reference, list(model.parameters()))
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)


def test_the_masked_multimix_mixer_mixes_over_its_part_alone(splits):
    """mixer="multimix" off the host: Λ over the labelled columns only (zeros on the unlabelled ones), the mixed
    logits Λ g(Z); with no unlabelled node in the batch the unlabelled term weighs 0 and the loss is finite."""
    model = official_gcn(splits).eval()
    method = GraphMix(mixer="multimix", n=40, concentration=2.0, step_choice="sum",
                      generator=torch.Generator().manual_seed(8), predictions=1, ramp_start=0, ramp_end=0)
    x, y = _batch(splits)
    unlabelled = y == UNLABELLED
    with MF.device_generic():
        terms = {t.name: t for t in method.terms(model, x, y)}
        replay = torch.Generator().manual_seed(8)
        lam = MF.masked_dirichlet(40, ~unlabelled, 2.0, generator=replay)
        assert torch.equal(lam[:, unlabelled], torch.zeros(40, int(unlabelled.sum())))
        with torch.no_grad():
            torch.testing.assert_close(terms["mixed"].logits, model.head(lam @ method.embed(model, x)),
                                       rtol=1e-5, atol=1e-6)
        labelled_only = {t.name: t for t in method.terms(model, *splits.train.tensors)}
    assert torch.equal(labelled_only["unlabelled"].row_weights, torch.zeros(40))
    assert torch.isfinite(method.reduce(list(labelled_only.values())))


def test_bad_settings_are_refused_in_one_line():
    for kwargs, match in [({"mixer": "triple"}, "mixer"), ({"path": "gat"}, "path"), ({"predictions": 0}, "predictions"),
                          ({"temperature": 0.0}, "temperature"), ({"ramp_start": 10, "ramp_end": 5}, "ramp_end"),
                          ({"step_choice": "dice"}, "step_choice"), ({"unlabelled_weight": -1.0}, "unlabelled_weight")]:
        with pytest.raises((ValueError, TypeError), match=match) as err:
            create_method("graphmix", **kwargs)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------ end to end

def test_the_graphmix_recipe_trains_on_the_fixture_with_unlabelled_nodes_and_no_teacher(cora, tmp_path):
    recipe = load_recipe("cora_graphmix")
    assert recipe["method"] == "graphmix" and recipe["model"] == "graphmix_gcn" and recipe["epochs"] == 2000
    config = TrainConfig.from_dict({**recipe, "epochs": 6, "unlabelled_batch": 6, "data_dir": str(cora.root),
                                    "out_dir": str(tmp_path / "r"), "progress": False, "device": "cpu",
                                    "method_args": {**recipe["method_args"], "ramp_start": 0, "ramp_end": 3}})
    trainer = Trainer(config)
    summary = trainer.run()
    assert summary["status"] == "completed" and trainer.method.steps == 6
    assert all(math.isfinite(summary["final"][k]) for k in ("train_loss", "val_loss", "test_loss"))
    again = Trainer(TrainConfig.from_dict({**config.to_dict(), "out_dir": str(tmp_path / "again")})).run()
    timing = {"examples_per_s", "epoch_time_s"}
    assert ({k: v for k, v in again["final"].items() if k not in timing}
            == {k: v for k, v in summary["final"].items() if k not in timing})  # seeded: the coin, λ, π, dropout and the unlabelled draw
    with pytest.raises(ValueError, match="needs distill"):  # other methods still need a teacher for them
        TrainConfig.from_dict({**config.to_dict(), "method": "erm", "method_args": {}})
