"""Mixing kept apart from the loss: every method's terms, one objective, pluggable criteria against plain references."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import multimix
import multimix.functional as MF
from multimix import losses
from multimix.methods import LossTerm, Objective
from multimix.models.gcn import GCN

ALL = list(multimix.METHODS)


def make(name, seed=0, **kw):
    if name in ("multimix", "dense_multimix"):
        kw.setdefault("n", 32)
    return multimix.create_method(name, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("name", ALL)
def test_the_objective_of_a_methods_terms_is_its_loss(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    model = tiny_model.eval()
    method = make(name)
    terms = method.terms(model, x, y)
    assert terms and all(isinstance(t, LossTerm) for t in terms)
    expected = {"erm": ["clean"], "multimix": ["mixed", "clean"], "dense_multimix": ["mixed", "pooled"],
                "mixupe": ["mixed", "mixupe"]}.get(name, ["mixed"])
    names = [t.name for t in terms]
    assert names == expected or (name == "graphmix" and names == ["clean"])  # GraphMix's coin: either step
    loss = make(name)(model, x, y)
    torch.testing.assert_close(method.reduce(terms), loss, rtol=0, atol=0)
    if name != "mixupe":  # MixupE rescales the sum (tested against the official code in test_methods.py)
        torch.testing.assert_close(Objective()(terms), loss, rtol=0, atol=0)


@pytest.mark.parametrize("one_pass", [True, False])
def test_dense_multimix_terms_are_the_embedding_losses_terms(one_pass, tiny_model, tiny_batch):
    """Same Λ: the method's mixed, clean and pooled terms sum to DenseMultiMix's loss on the dense features; on
    the CPU the mixed and pooled terms are values of the one pass (Λ never stored), on the device-generic path
    logits and targets of the n·r mixed positions."""
    x, y = tiny_batch
    model = tiny_model.eval()
    method = make("dense_multimix", clean_weight=0.5, pooled_weight=2.0)
    with contextlib.nullcontext() if one_pass else MF.device_generic():
        terms = method.terms(model, x, y)
        assert [(t.name, t.weight) for t in terms] == [("mixed", 1.0), ("clean", 0.5), ("pooled", 2.0)]
        if one_pass:
            assert terms[0].value is not None and terms[2].value is not None
        else:
            assert terms[0].logits.shape == (32 * 3, 4)  # n tuples × r positions, c classes
        lam = make("dense_multimix").sample_lam(8, "cpu")  # the draw a generator seeded like the method's makes
        direct = multimix.DenseMultiMix(n=32, clean_weight=0.5, pooled_weight=2.0)(model.encode(x), y, model.head,
                                                                                    lam=lam)
    torch.testing.assert_close(Objective()(terms), direct)


def test_dense_position_weighting_by_attention_weighs_rows_as_the_embedding_loss_does(tiny_model, tiny_batch):
    x, y = tiny_batch
    model = tiny_model.eval()
    method = make("dense_multimix", position_weighting="attention", pooled_weight=0.0)
    terms = method.terms(model, x, y)
    assert terms[0].row_weights is not None and float(terms[0].row_weights.sum()) == pytest.approx(1.0)
    lam = make("dense_multimix").sample_lam(8, "cpu")
    direct = multimix.DenseMultiMix(n=32, position_weighting="attention", pooled_weight=0.0)(
        model.encode(x), y, model.head, lam=lam)
    torch.testing.assert_close(Objective()(terms), direct)


def _mixup_reference(model, x, y, seed, alpha, c):
    """(mixed logits, mixed one-hot targets) of input mixup, its draws replayed from the seed."""
    g = torch.Generator().manual_seed(seed)
    lam = float(MF.sample_beta(alpha, generator=g))
    perm = MF.random_permutation(x.shape[0], generator=g)
    onehot = F.one_hot(y, c).float()
    return model(lam * x + (1 - lam) * x[perm]), lam * onehot + (1 - lam) * onehot[perm]


def test_label_smoothing_criterion_matches_torch(tiny_model, tiny_batch):
    x, y = tiny_batch
    model = tiny_model.eval()
    smooth = losses.LabelSmoothing(0.1)
    ours = make("erm", criterion=smooth)(model, x, y)
    torch.testing.assert_close(ours, F.cross_entropy(model(x), y, label_smoothing=0.1))
    logits, targets = _mixup_reference(model, x, y, 0, 1.0, 4)  # smoothing applies to the mixed targets
    reference = -(((1 - 0.1) * targets + 0.1 / 4) * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(make("mixup", alpha=1.0, criterion=smooth)(model, x, y), reference)
    with pytest.raises(ValueError, match="smoothing must be in"):
        losses.LabelSmoothing(1.0)


def test_bce_criterion_matches_torch_and_takes_multi_hot_rows(tiny_model, tiny_batch):
    x, y = tiny_batch
    model = tiny_model.eval()
    ours = make("erm", criterion=losses.bce_with_logits)(model, x, y)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(model(x), F.one_hot(y, 4).float()))
    logits, targets = _mixup_reference(model, x, y, 0, 1.0, 4)
    torch.testing.assert_close(make("mixup", alpha=1.0, criterion=losses.bce_with_logits)(model, x, y),
                               F.binary_cross_entropy_with_logits(logits, targets))
    multi_hot = F.one_hot(y, 4).float()
    multi_hot[:, 0] = 1.0  # every row has class 0 as well: rows sum to 2
    loss = make("multimix", criterion=losses.bce_with_logits)(model, x, multi_hot)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="summing to 2.*bce_with_logits"):  # not as probabilities under cross-entropy
        make("multimix")(model, x, multi_hot)


def test_a_users_callable_criterion(tiny_model, tiny_batch):
    """A focal loss written by the user (per row), and torch's own cross_entropy (a 0-d mean), unchanged."""
    x, y = tiny_batch
    model = tiny_model.eval()

    def focal(logits, targets, gamma=2.0):
        log_p = torch.log_softmax(logits.float(), -1)
        return -(targets * (1 - log_p.exp()) ** gamma * log_p).sum(-1)

    logits, targets = _mixup_reference(model, x, y, 0, 1.0, 4)
    torch.testing.assert_close(make("mixup", alpha=1.0, criterion=focal)(model, x, y), focal(logits, targets).mean())
    torch.testing.assert_close(make("mixup", alpha=1.0, criterion=F.cross_entropy)(model, x, y),
                               F.cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="weighs its rows"):  # a 0-d criterion cannot weigh Dense MultiMix's positions
        make("dense_multimix", position_weighting="attention", criterion=F.cross_entropy)(model, x, y)
    with pytest.raises(TypeError, match="criterion must be callable"):
        make("erm", criterion="focal")


def test_graphmix_terms_of_two_forward_passes_sum_in_one_objective():
    """GraphMix: the GCN's loss on node indices plus manifold mixup through the parameter-shared MLP (the same
    model on feature rows): two methods, two forward passes, one objective; value and gradients as written out."""
    g = torch.Generator().manual_seed(0)
    features = torch.rand(12, 5, generator=g)
    edges = torch.tensor([[i for i in range(12)] + [(i + 1) % 12 for i in range(12)],
                          [(i + 1) % 12 for i in range(12)] + [i for i in range(12)]])
    model = GCN(features, edges, num_classes=3, hidden=6, dropout=0.0)
    nodes, y = torch.arange(8), torch.randint(0, 3, (8,), generator=g)
    gcn_loss = multimix.ERM(num_classes=3)
    mlp_loss = multimix.ManifoldMixup(alpha=1.0, layers=(1,), num_classes=3, generator=torch.Generator().manual_seed(4))
    terms = gcn_loss.terms(model, nodes, y) + [t.scaled(0.5, prefix="mlp/")
                                               for t in mlp_loss.terms(model, features[nodes], y)]
    assert [(t.name, t.weight) for t in terms] == [("clean", 1.0), ("mlp/mixed", 0.5)]
    total = Objective()(terms)
    replay = torch.Generator().manual_seed(4)
    lam = float(MF.sample_beta(1.0, generator=replay))
    perm = MF.random_permutation(8, generator=replay)
    hidden = model.stages[0](features[nodes])  # the MLP path: no propagation
    onehot = F.one_hot(y, 3).float()
    mixed_logits = model.head(lam * hidden + (1 - lam) * hidden[perm])
    mixed_targets = lam * onehot + (1 - lam) * onehot[perm]
    mlp_loss_value = -(mixed_targets * torch.log_softmax(mixed_logits, 1)).sum(1).mean()
    reference = F.cross_entropy(model(nodes), y) + 0.5 * mlp_loss_value
    torch.testing.assert_close(total, reference)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(total, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(a, b)


def test_loss_terms_refuse_bad_shapes():
    with pytest.raises(ValueError, match="shape \\(k, c\\)"):
        LossTerm("mixed", torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(TypeError, match="needs logits and targets"):
        LossTerm("mixed")
    with pytest.raises(ValueError, match="no loss terms"):
        Objective()([])


def test_the_default_criterion_is_the_functional_soft_cross_entropy_bit_for_bit():
    """The objective's mean of per-row losses equals multimix.functional.soft_cross_entropy exactly (so the methods'
    results do not change with the objective), also on (n, r, c) rows flattened to (n·r, c)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, 10, generator=g) * 3
    targets = torch.softmax(torch.randn(7, 5, 10, generator=g), -1)
    assert torch.equal(losses.soft_cross_entropy(logits.reshape(-1, 10), targets.reshape(-1, 10)).mean(),
                       MF.soft_cross_entropy(logits, targets))


def _focal(logits, targets, gamma=2.0):
    log_p = torch.log_softmax(logits.float(), -1)
    return -(targets * (1 - log_p.exp()) ** gamma * log_p).sum(-1)


@pytest.mark.parametrize("name", ALL)
def test_the_teachers_targets_as_a_separate_term(name, tiny_model, tiny_batch):
    """separate_term: "distill/<term>" entries beside each term; under soft cross-entropy (linear in the targets)
    the same loss as the blended targets, same draws."""
    x, y = tiny_batch
    model = tiny_model.eval()
    y = y.clone()
    y[[1, 5]] = multimix.UNLABELLED  # their targets: the teacher's alone

    def method(separate, **kw):
        distill = multimix.SelfDistillation(model, weight=0.3, warmup_steps=0, separate_term=separate)
        if name == "mixupe":
            return multimix.MixupE(multimix.InputMixup(distill=distill, generator=torch.Generator().manual_seed(0),
                                                       **kw))
        return make(name, distill=distill, **kw)

    with torch.no_grad():
        model.head.weight.mul_(3.0)  # a teacher that differs from uniform
    terms = method(True).terms(model, x, y)
    names = [t.name for t in terms]
    assert "distill/mixed" in names or "distill/clean" in names
    # MixupE's own term, and GraphMix's unlabelled nodes (targets: its own predictions), have no teacher part
    assert all(f"distill/{n}" in names for n in names if not n.startswith("distill/") and n not in ("mixupe",
                                                                                                   "unlabelled"))
    torch.testing.assert_close(method(True)(model, x, y), method(False)(model, x, y))


def test_a_separate_teacher_term_under_a_focal_loss_is_its_own_term(tiny_model, tiny_batch):
    """ERM: (1 − w_i) focal(f_i, y_i) + w_i focal(f_i, teacher_i) averaged over rows (w_i = 1 when unlabelled)."""
    x, y = tiny_batch
    model = tiny_model.eval()
    y = y.clone()
    y[2] = multimix.UNLABELLED
    distill = multimix.SelfDistillation(model, weight=0.3, warmup_steps=0, separate_term=True)
    with torch.no_grad():
        model.head.weight.mul_(3.0)
        logits = model(x)
        teacher = distill.predict(x)
    ours = multimix.ERM(distill=distill, criterion=_focal, num_classes=4)(model, x, y)
    w = torch.full((8,), 0.3)
    w[2] = 1.0
    hard = F.one_hot(y.clamp_min(0), 4).float()
    reference = ((1 - w) * _focal(logits, hard) + w * _focal(logits, teacher)).mean()
    torch.testing.assert_close(ours, reference)
    blended = multimix.ERM(distill=multimix.SelfDistillation(model, weight=0.3, warmup_steps=0), criterion=_focal,
                           num_classes=4)(model, x, y)
    assert not torch.allclose(ours, blended)  # focal is not linear in its targets: separate is not blended
