"""Training methods over the model contract: end-to-end steps, MixupE, EMA teacher, autocast, compile, adapters."""

import contextlib
import copy

import pytest
import torch
from torch import nn

import multimix
import multimix.functional as MF
from multimix.models import adapt, cnn1d, preact_resnet_small

ALL = list(multimix.METHODS)


def make(name, **kw):
    if name in ("multimix", "dense_multimix"):
        kw.setdefault("n", 64)
    return multimix.create_method(name, generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("name", ALL)
def test_every_method_trains_a_step(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    method = make(name)
    before = copy.deepcopy(tiny_model.state_dict())
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    loss = method(tiny_model, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
    opt.step()
    method.update(tiny_model)
    assert any(not torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


@pytest.mark.parametrize("name", ALL)
def test_every_method_with_self_distillation(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    distill = multimix.SelfDistillation(tiny_model, momentum=0.9, temperature=2.0, weight=0.5)
    method = make(name, distill=distill) if name != "mixupe" else multimix.MixupE(multimix.InputMixup(distill=distill))
    loss = method(tiny_model, x, y)
    loss.backward()
    assert torch.isfinite(loss)


def test_same_generator_seed_gives_same_loss(tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.eval()
    for name in ALL:
        assert torch.equal(make(name)(tiny_model, x, y), make(name)(tiny_model, x, y)), name


def test_multimix_method_matches_embedding_call(tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.eval()
    method = make("multimix", alpha=0.5)
    lam = method.mix.sample_lam(x.shape[0])  # the next draw of a generator seeded like the method's
    direct = multimix.MultiMix(n=64, alpha=0.5)(tiny_model.pool(tiny_model.encode(x)), y, tiny_model.head, lam=lam)
    torch.testing.assert_close(make("multimix", alpha=0.5)(tiny_model, x, y), direct)


def test_self_distillation_targets_blend_teacher(tiny_model, tiny_batch):
    x, y = tiny_batch
    distill = multimix.SelfDistillation(tiny_model, temperature=3.0, weight=0.25, warmup_steps=0)
    hard = MF.as_soft_targets(y, 4)
    with torch.no_grad():
        teacher = torch.softmax(distill.teacher.eval()(x) / 3.0, 1)
    torch.testing.assert_close(distill.targets(x, hard), 0.75 * hard + 0.25 * teacher)
    dense = distill.targets(x, hard, dense=True)
    assert dense.shape == (8, 4, 3)
    torch.testing.assert_close(dense.sum(1), torch.ones(8, 3))


def test_ema_teacher_update_is_exact(tiny_model, tiny_batch):
    distill = multimix.SelfDistillation(tiny_model, momentum=0.9)
    old = copy.deepcopy(distill.teacher.state_dict())
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p))
    tiny_model.train()
    tiny_model(tiny_batch[0])  # moves BN running statistics and num_batches_tracked
    distill.update(tiny_model)
    student = tiny_model.state_dict()
    for name, value in distill.teacher.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * old[name] + 0.1 * student[name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, student[name]), name
    assert not any(p.requires_grad for p in distill.teacher.parameters())


# ------------------------------------------------------------------ MixupE

def _official_mixupe(model, x, y, c, lam, perm, alpha, eta, version, threshold):
    """oneHuster/MixupE mixup.py, versions 3/4, written out with a given λ and pairing."""
    output = model(lam * x + (1 - lam) * x[perm])
    ce = nn.functional.cross_entropy
    loss = lam * ce(output, y) + (1 - lam) * ce(output, y[perm])
    loss_scale = torch.abs(loss.detach())
    y_onehot = nn.functional.one_hot(y, c).float()
    f = model(x)
    b = y_onehot - torch.softmax(f, dim=1)
    if version == 4:
        b = b.detach()
    loss_new = torch.sum(f * b, dim=1)
    if threshold is not None:
        idx = torch.nonzero(loss_new.detach() < threshold).squeeze()
        loss_new = loss_new[idx]
    lamba_mod_mean = (alpha + 1) / (2 * alpha + 1)
    loss_new = (1.0 - lamba_mod_mean) * torch.sum(loss_new) / x.shape[0]
    loss = loss - eta * loss_new
    return (loss_scale / torch.abs(loss.detach())) * loss


@pytest.mark.parametrize("version,threshold", [(3, 1.0), (4, None), (3, None)])
def test_mixupe_equals_official_formula(version, threshold, tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.eval()  # same BN behaviour in both forward passes of both computations
    alpha, eta = 0.7, 0.5  # a large η so that the extra term matters
    method = multimix.MixupE(multimix.InputMixup(alpha, generator=torch.Generator().manual_seed(3)),
                             eta=eta, version=version, threshold=threshold)
    g = torch.Generator().manual_seed(3)  # replay the base's draws: λ, then π
    lam = float(MF.sample_beta(alpha, generator=g))
    perm = MF.random_permutation(8, generator=g)
    params = list(tiny_model.parameters())
    ours = method(tiny_model, x, y)
    ref = _official_mixupe(tiny_model, x, y, 4, lam, perm, alpha, eta, version, threshold)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b)


def test_mixupe_over_cutmix_and_manifold(tiny_model, tiny_batch):
    x, y = tiny_batch
    for base in ("cutmix", "manifold_mixup"):
        loss = multimix.create_method("mixupe", base=base, alpha=1.0)(tiny_model, x, y)
        assert torch.isfinite(loss)


# ------------------------------------------------------------------ CutMix, manifold mixup

def test_cutmix_method_uses_true_pasted_area():
    """Targets are weighted by the pasted box's true area, and the box really comes from x[π]."""

    class Probe(multimix.MixableClassifier):  # fixed logits make the loss linear in the targets
        def __init__(self):
            super().__init__([nn.Identity()], nn.Identity())
            self.seen = None

        def forward(self, x):
            self.seen = x
            return torch.tensor([[0.0, 3.0]]).expand(x.shape[0], 2)

    x = torch.stack([torch.zeros(1, 10, 10), torch.ones(1, 10, 10), 2 * torch.ones(1, 10, 10)])
    y = torch.tensor([0, 1, 1])
    for seed in range(5):
        model = Probe()
        loss = multimix.CutMix(alpha=1.0, num_classes=2, generator=torch.Generator().manual_seed(seed))(model, x, y)
        g = torch.Generator().manual_seed(seed)  # replay: λ, π, then the box
        lam = MF.sample_beta(1.0, generator=g)
        perm = MF.random_permutation(3, generator=g)
        lam_true = float(MF.cutmix_mask((10, 10), lam, generator=g)[1])
        for i in range(3):
            pasted = (model.seen[i] != x[i]).float().mean().item()
            expected_pasted = (1 - lam_true) if perm[i] != i else 0.0
            assert pasted == pytest.approx(expected_pasted)
        targets = MF.as_soft_targets(y, 2)
        mixed = lam_true * targets + (1 - lam_true) * targets[perm]
        torch.testing.assert_close(loss, MF.soft_cross_entropy(model.seen.new_tensor([[0.0, 3.0]]).expand(3, 2), mixed))


def test_manifold_mixup_rejects_layer_beyond_model(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="layers"):
        multimix.ManifoldMixup(layers=(0, 7))(tiny_model, *tiny_batch)
    with pytest.raises(ValueError, match="layers"):
        multimix.ManifoldMixup(layers=())


def test_manifold_mixup_at_embedding_equals_mixup_of_features(tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.eval()
    k = tiny_model.num_stages
    method = multimix.ManifoldMixup(alpha=1.0, layers=(k,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    lam = float(MF.sample_beta(1.0, generator=g))
    perm = MF.random_permutation(8, generator=g)
    z = tiny_model.pool(tiny_model.encode(x))
    logits = tiny_model.head(lam * z + (1 - lam) * z[perm])
    t = MF.as_soft_targets(y, 4)
    ref = MF.soft_cross_entropy(logits, lam * t + (1 - lam) * t[perm])
    torch.testing.assert_close(method(tiny_model, x, y), ref)


# ------------------------------------------------------------------ errors

def test_create_method_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="valid methods: erm, mixup"):
        multimix.create_method("mixupp")


def test_model_without_contract_is_rejected(tiny_batch):
    with pytest.raises(TypeError, match="model contract"):
        multimix.ERM(num_classes=4)(nn.Linear(12, 4), *tiny_batch)


def test_batch_mismatch_is_rejected(tiny_model, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(ValueError, match="batch"):
        make("multimix")(tiny_model, x, y[:5])


# ------------------------------------------------------------------ autocast and compile

@pytest.mark.parametrize("name", ALL)
def test_every_method_under_bfloat16_autocast(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = make(name)(tiny_model, x, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL)
def test_every_method_trains_under_float16_autocast_with_a_grad_scaler(name, tiny_model, tiny_batch):
    """float16 needs loss scaling: every loss stays finite, and a step the scaler skips (an overflow at its
    initial scale of 2^16 halves the scale) is no step for the attached method either."""
    import math

    x, y = tiny_batch
    method = make(name)
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=1000)
    method.attach(optimizer, tiny_model)
    for _ in range(6):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = method(tiny_model, x, y)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    skipped = round(math.log2(2.0 ** 16 / scaler.get_scale()))
    assert skipped <= 2 and method.steps == 6 - skipped
    assert all(torch.isfinite(p).all() for p in tiny_model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_every_method_under_torch_compile(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    torch._dynamo.reset()
    eager_method, compiled_method = make(name), make(name)
    tiny_model.eval()  # BN in eval: eager and compiled see identical model state
    eager = eager_method(tiny_model, x, y)
    compiled = torch.compile(lambda a, b: compiled_method(tiny_model, a, b), backend="aot_eager")(x, y)
    torch.testing.assert_close(compiled, eager)
    compiled.backward()


def test_multimix_under_inductor():
    """The embedding-level loss compiles with the default backend and matches eager."""
    torch._dynamo.reset()
    z, y, head = torch.randn(16, 8), torch.randint(0, 5, (16,)), nn.Linear(8, 5)
    lam = MF.dirichlet(100, 16, 0.1)
    dense_z = torch.randn(16, 8, 4)
    mm, dmm = multimix.MultiMix(n=100), multimix.DenseMultiMix(n=100)
    torch.testing.assert_close(torch.compile(lambda a: mm(a, y, head, lam=lam))(z), mm(z, y, head, lam=lam))
    torch.testing.assert_close(torch.compile(lambda a: dmm(a, y, head, lam=lam))(dense_z), dmm(dense_z, y, head, lam=lam))


# ------------------------------------------------------------------ models and adapters

@pytest.mark.parametrize("factory,shape,positions", [
    (lambda: cnn1d(num_classes=10, channels=8), (4, 1, 40), 5),
    (lambda: preact_resnet_small(num_classes=10, width=8), (2, 3, 32, 32), 16),
])
def test_builtin_models_follow_contract(factory, shape, positions):
    model = factory()
    x = torch.randn(*shape)
    features = model.encode(x)
    assert features.flatten(2).shape[2] == positions
    torch.testing.assert_close(model(x), model.head(model.pool(features)))
    torch.testing.assert_close(model.encode(model.encode(x, 0, 2), 2), features)


def test_torchvision_resnet_adapter():
    torchvision = pytest.importorskip("torchvision")
    raw = torchvision.models.resnet18(num_classes=7).eval()
    model = adapt(raw)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), raw(x))
    assert model.encode(x).shape == (2, 512, 2, 2) and model.num_stages == 5
    loss = make("dense_multimix")(model.train(), x, torch.tensor([1, 6]))
    loss.backward()
    assert raw.fc.weight.grad is not None  # parameters are shared, not copied


@pytest.mark.parametrize("arch,kwargs,spatial", [
    ("resnet18", {}, (2, 2)),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, (17,)),
])
def test_timm_adapter(arch, kwargs, spatial):
    timm = pytest.importorskip("timm")
    raw = timm.create_model(arch, pretrained=False, num_classes=5, **kwargs).eval()
    model = adapt(raw)
    x = torch.randn(2, 3, 64 if arch == "resnet18" else 32, 64 if arch == "resnet18" else 32)
    torch.testing.assert_close(model(x), raw(x))
    features = model.encode(x)
    assert features.shape[2:] == spatial
    for name in ("multimix", "dense_multimix", "manifold_mixup"):
        kw = {"layers": (0, 1)} if name == "manifold_mixup" else {}
        loss = make(name, **kw)(model.train(), x, torch.tensor([0, 4]))
        assert torch.isfinite(loss)


def test_ema_teacher_accepts_compiled_student(tiny_model):
    compiled = torch.compile(tiny_model)
    distill = multimix.SelfDistillation(compiled, momentum=0.5)
    with torch.no_grad():
        tiny_model.head.weight.add_(1.0)
    distill.update(compiled)
    torch.testing.assert_close(distill.teacher.head.weight, tiny_model.head.weight - 0.5)


def test_self_distillation_warmup_ramps_the_teacher_weight(tiny_model, tiny_batch):
    x, y = tiny_batch
    distill = multimix.SelfDistillation(tiny_model, weight=0.6, warmup_steps=4)
    hard = MF.as_soft_targets(y, 4)
    assert distill.current_weight == 0.0
    torch.testing.assert_close(distill.targets(x, hard), hard)
    for expected in (0.15, 0.3, 0.45, 0.6, 0.6):
        distill.update(tiny_model)
        assert distill.current_weight == pytest.approx(expected)
    restored = multimix.SelfDistillation(tiny_model, weight=0.6, warmup_steps=4)
    restored.load_state_dict(distill.state_dict())
    assert restored.updates == 5


def test_self_distillation_defaults_match_the_documented_ones(tiny_model):
    distill = multimix.SelfDistillation(tiny_model)
    assert {k: getattr(distill, k) for k in multimix.SelfDistillation.DEFAULTS} == multimix.SelfDistillation.DEFAULTS


def test_manifold_layers_of_preact_resnet_follow_the_paper():
    """Layer 0 is input mixup; every other offered layer (output of group k) mixes somewhere else.

    Mixing right after the bias-free stem convolution would be input mixup again (a linear map commutes with
    mixing), so the stem is part of group 1 and is never a layer of its own.
    """
    torch.manual_seed(0)
    model = preact_resnet_small(num_classes=10).eval()
    assert model.num_stages == 4
    x, perm, lam = torch.randn(8, 3, 32, 32), torch.randperm(8), torch.tensor(0.3)
    reference, _ = multimix.InputMixup(num_classes=10).mixed_logits(model, x, lam, perm)
    spread = reference.std()
    for k in range(model.num_stages + 1):
        logits, _ = multimix.ManifoldMixup(layers=(k,), num_classes=10).mixed_logits(model, x, lam, perm)
        gap = (logits - reference).abs().max()
        if k == 0:
            assert gap <= 1e-5 * spread.clamp_min(1.0)
        else:
            assert gap > 1e-2 * spread, f"layer {k} behaves like input mixup (gap {gap:.2e}, spread {spread:.2e})"


# ------------------------------------------------------------------ semi-supervised: label -1 = unlabelled

def test_unlabelled_rows_take_the_teachers_prediction(tiny_model, tiny_batch):
    x, y = tiny_batch
    y = y.clone()
    y[[1, 4, 6]] = multimix.UNLABELLED
    distill = multimix.SelfDistillation(tiny_model, temperature=0.5, weight=0.25, warmup_steps=0)
    targets = make("erm", distill=distill, num_classes=4).targets(tiny_model, x, y)
    with torch.no_grad():
        teacher = torch.softmax(distill.teacher.eval()(x) / 0.5, 1)
    labelled = y != multimix.UNLABELLED
    torch.testing.assert_close(targets[~labelled], teacher[~labelled])
    torch.testing.assert_close(targets[labelled], 0.75 * MF.as_soft_targets(y[labelled], 4) + 0.25 * teacher[labelled])


def test_unlabelled_rows_use_the_teacher_also_during_the_warm_up(tiny_model, tiny_batch):
    x, y = tiny_batch
    y = y.clone()
    y[0] = multimix.UNLABELLED
    distill = multimix.SelfDistillation(tiny_model, temperature=1.0, weight=0.5, warmup_steps=100)
    assert distill.current_weight == 0.0 and distill.warmup_fraction == 0.0
    targets = make("erm", distill=distill, num_classes=4).targets(tiny_model, x, y)
    with torch.no_grad():
        teacher = torch.softmax(distill.teacher.eval()(x[:1]), 1)
    torch.testing.assert_close(targets[:1], teacher)
    torch.testing.assert_close(targets[1:], MF.as_soft_targets(y[1:], 4))  # labelled rows: no blend yet


@pytest.mark.parametrize("name", ["erm", "mixup", "manifold_mixup", "multimix", "dense_multimix"])
def test_every_method_mixes_unlabelled_rows(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    y = y.clone()
    y[::2] = multimix.UNLABELLED
    distill = multimix.SelfDistillation(tiny_model, warmup_steps=0)
    loss = make(name, distill=distill)(tiny_model, x, y)
    loss.backward()
    assert torch.isfinite(loss)


def test_consistency_loss_is_the_mean_squared_error_to_the_teachers_targets(tiny_model, tiny_batch):
    """γ · ramp · mean((softmax(student) − softmax(teacher / T))²), gradients on the student only."""
    x, _ = tiny_batch
    model = tiny_model.eval()
    distill = multimix.SelfDistillation(model, temperature=0.5, warmup_steps=4, consistency_weight=3.0)
    assert float(distill.consistency(model, x)) == 0.0  # before the warm-up has started
    for _ in range(2):
        distill.update(model)
    with torch.no_grad():
        model.head.weight.mul_(1.5)  # student and teacher now differ
    loss = distill.consistency(model, x)
    student = torch.softmax(model(x), 1)
    teacher = torch.softmax(distill.teacher.eval()(x) / 0.5, 1).detach()
    torch.testing.assert_close(loss, 3.0 * 0.5 * ((student - teacher) ** 2).mean())
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in distill.teacher.parameters())
    with pytest.raises(ValueError, match="consistency_weight must be a finite number >= 0, got -1"):
        multimix.SelfDistillation(model, consistency_weight=-1)


@pytest.mark.parametrize("name", ["erm", "multimix", "manifold_mixup"])
def test_with_a_consistency_weight_unlabelled_rows_leave_the_mixing(name, tiny_model, tiny_batch):
    """method(x, y) = method.loss(labelled rows) + teacher consistency(unlabelled rows), same random draws."""
    x, y = tiny_batch
    y = y.clone()
    y[[0, 3, 5]] = multimix.UNLABELLED
    model = tiny_model.eval()
    distill = multimix.SelfDistillation(model, warmup_steps=0, consistency_weight=2.0)
    with torch.no_grad():
        model.head.weight.mul_(2.0)
    method = make(name, distill=distill)
    total = method(model, x, y)
    labelled = y != multimix.UNLABELLED
    method.generator.manual_seed(0)
    expected = method.loss(model, x[labelled], y[labelled]) + distill.consistency(model, x[~labelled])
    torch.testing.assert_close(total, expected)
    assert float(distill.consistency(model, x[~labelled])) > 0
    only_unlabelled = torch.full_like(y, multimix.UNLABELLED)
    torch.testing.assert_close(method(model, x, only_unlabelled), distill.consistency(model, x))
    method.generator.manual_seed(0)
    mixed_in = make(name, distill=multimix.SelfDistillation(model, warmup_steps=0))(model, x, y)
    assert not torch.allclose(mixed_in, total)  # without the weight they join the method's loss instead


def test_unlabelled_rows_without_a_teacher_are_refused(tiny_model, tiny_batch):
    x, y = tiny_batch
    y = y.clone()
    y[2] = multimix.UNLABELLED
    with pytest.raises(ValueError, match="1 examples unlabelled.*distill=SelfDistillation"):
        make("multimix")(tiny_model, x, y)
    y[3] = -2  # not the unlabelled marker: still a bad label
    with pytest.raises(ValueError, match="labels y must lie in"):
        make("erm", distill=multimix.SelfDistillation(tiny_model), num_classes=4)(tiny_model, x, y)


def test_timm_adapter_forwards_the_models_no_weight_decay():
    """A ViT's position embedding and class token stay undecayed through the adapter, as timm's optimiser
    factory leaves them; everything else (including the shared classifier) is decayed."""
    timm = pytest.importorskip("timm")
    from multimix.engine.build import parameter_groups

    raw = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8)
    model = adapt(raw)
    exempt_raw = {name for name, _ in raw.named_parameters() if name in raw.no_weight_decay()}
    assert exempt_raw == {"pos_embed", "cls_token"}  # dist_token is in timm's list but this ViT has none
    assert model.no_weight_decay() == {f"stages.0.model.{name}" for name in exempt_raw}
    decayed, undecayed = parameter_groups(model, 0.05)
    assert undecayed["weight_decay"] == 0.0 and {id(p) for p in undecayed["params"]} == {
        id(raw.pos_embed), id(raw.cls_token)}
    assert len(decayed["params"]) + 2 == len(list(model.parameters())) and id(raw.head.weight) in {
        id(p) for p in decayed["params"]}
    assert adapt(timm.create_model("resnet18", pretrained=False, num_classes=5)).no_weight_decay() == set()


@pytest.mark.parametrize("one_pass", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"attention": "uniform", "pooled_weight": 0.0, "clean_weight": 0.5},
                                    {"attention": "cam", "position_weighting": "attention"}])
def test_dense_multimix_method_equals_the_embedding_loss(kwargs, one_pass, tiny_model, tiny_batch):
    """The method (over the model contract) and the embedding-level DenseMultiMix give one loss and one gradient
    for the same dense features and Λ: the two spell out the same arithmetic. ``one_pass``: Λ from equal
    generators (the fused pass on the CPU where the settings allow it); else Λ given, on the device-generic
    path (sample, then mix)."""
    x, y = tiny_batch
    method = make("dense_multimix", **kwargs)
    method.generator = torch.Generator().manual_seed(3)
    lam = MF.dirichlet(64, x.shape[0], 0.5 / x.shape[0], generator=torch.Generator().manual_seed(3))
    given = {}
    if not one_pass:
        method.sample_lam = lambda m, device=None: lam
        given = {"lam": lam}
    tiny_model.eval()  # batch norm in eval mode: the two forward passes see the same features
    with contextlib.nullcontext() if one_pass else MF.device_generic():
        ours = method(tiny_model, x, y)
        (grad_method,) = torch.autograd.grad(ours, tiny_model.head.weight)
        features = tiny_model.encode(x)
        reference = multimix.DenseMultiMix(64, **{"concentration": method.mix.concentration, **kwargs},
                                           generator=torch.Generator().manual_seed(3))(
            features, y, tiny_model.head, **given)
        (grad_embedding,) = torch.autograd.grad(reference, tiny_model.head.weight)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad_method, grad_embedding)
