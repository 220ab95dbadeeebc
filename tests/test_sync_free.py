"""No method's training step reads a value back to the host: the code path used off the CPU, forced on the CPU
(``multimix.functional.device_generic``), makes no call that would synchronise a GPU."""

import pytest
import torch

import multimix
import multimix.functional as MF
from sync_counter import SyncCounter

ALL = list(multimix.METHODS)
SPLITS = ("graphmix",)  # methods that split labelled and unlabelled rows by a boolean mask (a count read back)


def make(name, **kw):
    if name in ("multimix", "dense_multimix"):
        kw.setdefault("n", 64)
    if name == "mixupe":
        return multimix.MixupE(multimix.InputMixup(generator=torch.Generator().manual_seed(0), **kw))
    return multimix.create_method(name, generator=torch.Generator().manual_seed(0), **kw)


def one_step(method, model, x, y):
    """The method's part of a training step: loss, backward, SGD step, the method's update."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = method(model, x, y)
    loss.backward()
    opt.step()
    method.update(model)
    return loss


@pytest.mark.parametrize("distill", [False, True], ids=["plain", "distill"])
@pytest.mark.parametrize("name", ALL)
def test_a_step_never_reads_back(monkeypatch, name, distill, tiny_model, tiny_batch):
    """One step of every method; GraphMix's only reads are the three boolean-mask indexings of its split."""
    x, y = tiny_batch
    kw = {"distill": multimix.SelfDistillation(tiny_model, warmup_steps=0)} if distill else {}
    method = make(name, **kw)
    one_step(method, tiny_model, x, y)  # first use: lazy set-up may read once, like a CUDA context
    with SyncCounter(monkeypatch) as counter, MF.device_generic():
        loss = one_step(method, tiny_model, x, y)
    assert counter.calls == (["aten.index.Tensor (boolean mask)"] * 3 if name in SPLITS else [])
    assert torch.isfinite(loss)


def test_soft_labels_and_unlabelled_rows_never_read_back(monkeypatch, tiny_model, tiny_batch):
    """Soft label rows and rows marked unlabelled (teacher targets) also take no host read."""
    x, y = tiny_batch
    soft = torch.softmax(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    semi = y.clone()
    semi[:3] = multimix.UNLABELLED
    method = make("multimix", distill=multimix.SelfDistillation(tiny_model, warmup_steps=0))
    for labels in (soft, semi):
        one_step(method, tiny_model, x, labels)
        with SyncCounter(monkeypatch) as counter, MF.device_generic():
            one_step(method, tiny_model, x, labels)
        assert counter.calls == []


def test_device_generic_path_is_the_same_law(tiny_model, tiny_batch):
    """Forcing the device path changes only where Λ's bits come from: a finite loss, and MultiMix's Λ still
    has rows on the simplex."""
    with MF.device_generic():
        lam = MF.dirichlet(500, 16, 0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lam.sum(1), torch.ones(500))
    direct = MF.dirichlet(500, 16, 0.5, generator=torch.Generator().manual_seed(0), method="torch")
    assert torch.equal(lam, direct)


def test_host_draws_are_uniform_leave_the_generator_alone_and_resume():
    """Method.host_uniform: U(0, 1) (KS), no draw from the method's generator, and a method restored from a
    state dict continues the same stream."""
    from scipy import stats

    method = make("manifold_mixup")
    before = method.generator.get_state()
    draws = [method.host_uniform("cpu") for _ in range(2000)]
    assert stats.kstest(draws, "uniform").pvalue > 1e-3
    assert torch.equal(method.generator.get_state(), before)
    state = method.state_dict()
    later = [method.host_uniform("cpu") for _ in range(5)]
    resumed = make("manifold_mixup")
    resumed.load_state_dict(state)
    assert [resumed.host_uniform("cpu") for _ in range(5)] == later
    assert make("manifold_mixup").host_uniform("cpu") == draws[0]  # same seed, same stream
    other = multimix.create_method("manifold_mixup", generator=torch.Generator().manual_seed(1))
    assert other.host_uniform("cpu") != draws[0]


def test_manifold_mixup_picks_each_layer_equally_often(tiny_model):
    """The layer drawn on the host is uniform over ``layers`` (chi-square over 600 picks)."""
    from scipy import stats

    method = multimix.ManifoldMixup(layers=(0, 1, 2), num_classes=4, generator=torch.Generator().manual_seed(0))
    picked = []
    encode = tiny_model.encode
    tiny_model.encode = lambda x, start=0, stop=None: (picked.append(stop) if start == 0 else None,
                                                       encode(x, start, stop))[1]
    x, y = torch.randn(4, 2, 12), torch.tensor([0, 1, 2, 3])
    for _ in range(600):
        method.terms(tiny_model, x, y)
    counts = [picked.count(k) for k in (0, 1, 2)]
    assert sum(counts) == 600
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_the_embedding_level_losses_with_a_given_lam_never_read_back(monkeypatch):
    """MultiMix and DenseMultiMix called with a user's Λ: its shape is checked, its values only on the host."""
    g = torch.Generator().manual_seed(0)
    z, dense = torch.randn(6, 5, generator=g), torch.randn(6, 5, 3, generator=g)
    y, head = torch.tensor([0, 1, 2, 0, 1, 2]), torch.nn.Linear(5, 3)
    lam = MF.dirichlet(16, 6, 0.5, generator=g)
    for mix, features in ((multimix.MultiMix(n=16), z), (multimix.DenseMultiMix(n=16), dense)):
        with SyncCounter(monkeypatch) as counter, MF.device_generic():
            loss = mix(features, y, head, lam=lam)
        assert counter.calls == []
        torch.testing.assert_close(loss, mix(features, y, head, lam=lam))
    with MF.device_generic(), pytest.raises(ValueError, match="shape"):
        multimix.MultiMix(n=16)(z, y, head, lam=lam[:, :5])
