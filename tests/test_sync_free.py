"""No method's training step reads a value back to the host: the code path used off the CPU, forced on the CPU
(``multimix.functional.device_generic``), makes no call that would synchronise a GPU."""

import contextlib

import pytest
import torch

import multimix
import multimix.functional as MF
from sync_counter import SyncCounter

ALL = list(multimix.METHODS)


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
def test_a_step_never_reads_back(name, distill, tiny_model, tiny_batch):
    """One step of every method."""
    x, y = tiny_batch
    kw = {"distill": multimix.SelfDistillation(tiny_model, warmup_steps=0)} if distill else {}
    method = make(name, **kw)
    one_step(method, tiny_model, x, y)  # first use: lazy set-up may read once, like a CUDA context
    with SyncCounter() as counter, MF.device_generic():
        loss = one_step(method, tiny_model, x, y)
    assert counter.calls == []
    assert torch.isfinite(loss)


def test_soft_labels_and_unlabelled_rows_never_read_back(tiny_model, tiny_batch):
    """Soft label rows and rows marked unlabelled (teacher targets) also take no host read."""
    x, y = tiny_batch
    soft = torch.softmax(torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    semi = y.clone()
    semi[:3] = multimix.UNLABELLED
    method = make("multimix", distill=multimix.SelfDistillation(tiny_model, warmup_steps=0))
    for labels in (soft, semi):
        one_step(method, tiny_model, x, labels)
        with SyncCounter() as counter, MF.device_generic():
            one_step(method, tiny_model, x, labels)
        assert counter.calls == []


@pytest.mark.parametrize("mixer", ["pairwise", "multimix"])
def test_graphmix_with_unlabelled_rows_never_reads_back(mixer, tiny_model, tiny_batch):
    """GraphMix keeps its labelled and unlabelled parts as masks of the batch: no part's size is read."""
    x, y = tiny_batch
    semi = y.clone()
    semi[:3] = multimix.UNLABELLED
    method = make("graphmix", mixer=mixer, step_choice="sum", ramp_start=0, ramp_end=0)
    one_step(method, tiny_model, x, semi)
    with SyncCounter() as counter, MF.device_generic():
        terms = method.terms(tiny_model, x, semi)
        one_step(method, tiny_model, x, semi)
    assert counter.calls == []
    assert {t.name for t in terms} == {"clean", "mixed", "unlabelled"}


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


def test_the_embedding_level_losses_with_a_given_lam_never_read_back():
    """MultiMix and DenseMultiMix called with a user's Λ: its shape is checked, its values only on the host."""
    g = torch.Generator().manual_seed(0)
    z, dense = torch.randn(6, 5, generator=g), torch.randn(6, 5, 3, generator=g)
    y, head = torch.tensor([0, 1, 2, 0, 1, 2]), torch.nn.Linear(5, 3)
    lam = MF.dirichlet(16, 6, 0.5, generator=g)
    for mix, features in ((multimix.MultiMix(n=16), z), (multimix.DenseMultiMix(n=16), dense)):
        with SyncCounter() as counter, MF.device_generic():
            loss = mix(features, y, head, lam=lam)
        assert counter.calls == []
        torch.testing.assert_close(loss, mix(features, y, head, lam=lam))
    with MF.device_generic(), pytest.raises(ValueError, match="shape"):
        multimix.MultiMix(n=16)(z, y, head, lam=lam[:, :5])


# ------------------------------------------------------------------ our Trainer's step loop


def trainer_reads(tmp_path, tiny, name, device_path, **kw):
    """(reads made by the Trainer's own step loop during a run, the run's summary, its final model state)."""
    from multimix.engine import Trainer

    config = tiny(tmp_path, out_dir=str(tmp_path / name), method="erm", batch_size=32, checkpoint=False, **kw)
    trainer = Trainer(config).prepare()
    try:
        with SyncCounter() as counter, (MF.device_generic() if device_path else contextlib.nullcontext()):
            row = trainer.train_epoch(0)
    finally:
        trainer.close()
    own = [call for call, site in zip(counter.calls, counter.sites)
           if site is not None and site[0] == "trainer.py" and site[1] in ("train_epoch", "read_loss")]
    return own, row, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_the_trainer_reads_the_loss_every_k_steps_on_an_accelerator(monkeypatch, tmp_path, tiny):
    """6 steps: on the host the loss is read each step; on the accelerator path every 4 steps and at the end
    (2 reads); the same model and, to float32 rounding, the same mean loss."""
    import multimix.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "HOST_READ_EVERY", 4)
    host, host_row, host_state = trainer_reads(tmp_path, tiny, "host", False)
    device, device_row, device_state = trainer_reads(tmp_path, tiny, "device", True)
    assert len(host) == 6 * 2  # float(loss): the Python read and its aten op, each step
    assert len(device) == 2 * 2
    for key, value in host_state.items():
        assert torch.equal(value, device_state[key]), key
    assert device_row["train_loss"] == pytest.approx(host_row["train_loss"], rel=1e-5)


def test_a_nan_loss_on_the_accelerator_path_stops_naming_its_steps(monkeypatch, tmp_path, tiny):
    import multimix.engine.trainer as trainer_module
    from multimix.engine import NonFiniteLossError, Trainer

    monkeypatch.setattr(trainer_module, "HOST_READ_EVERY", 4)
    trainer = Trainer(tiny(tmp_path, method="erm", batch_size=32, checkpoint=False)).prepare()
    calls = []

    class Poisoned:  # the real method, whose second loss is NaN
        def __init__(self, method):
            self.method = method

        def __getattr__(self, name):
            return getattr(self.method, name)

        def __call__(self, model, x, y):
            calls.append(1)
            return self.method(model, x, y) * (float("nan") if len(calls) == 2 else 1.0)

    trainer.method = Poisoned(trainer.method)
    try:
        with MF.device_generic(), pytest.raises(NonFiniteLossError, match=r"at epoch 1, one of steps 1-4; stopped"):
            trainer.train_epoch(0)
    finally:
        trainer.close()
    assert len(calls) == 4  # read at the 4th step, not later


def test_ranks_on_accelerators_agree_on_a_stop_every_k_steps(monkeypatch):
    """The stop agreement of a distributed job (a collective read back) runs each step over gloo on the CPU and
    every HOST_READ_EVERY steps when the collective runs on an accelerator; every rank skips the same steps."""
    import signal
    from types import SimpleNamespace

    import multimix.distributed as D
    import multimix.engine.trainer as trainer_module
    from multimix.engine.signals import Interrupted

    reads = []
    monkeypatch.setattr(D, "sum_across_ranks", lambda value: (reads.append(value), value)[1])
    fake = SimpleNamespace(stop=SimpleNamespace(signum=signal.SIGTERM), procs=SimpleNamespace(distributed=True))
    for device, first_read in (("cpu", 0), ("meta", trainer_module.HOST_READ_EVERY - 1)):
        monkeypatch.setattr(D, "comm_device", lambda device=device: torch.device(device))
        reads.clear()
        for step in range(first_read):
            trainer_module.Trainer.check_stop(fake, step)  # no collective, no stop yet
        assert reads == []
        with pytest.raises(Interrupted):
            trainer_module.Trainer.check_stop(fake, first_read)
        assert reads == [float(signal.SIGTERM)]
        with pytest.raises(Interrupted):  # outside the step loop (epoch ends, set-up): always
            trainer_module.Trainer.check_stop(fake)
