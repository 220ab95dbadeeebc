"""Methods own their facts: state (the EMA teacher), the per-step hook, one generator, their needs; old checkpoints."""

import copy
import dataclasses
import io
import warnings

import pytest
import torch

import multimix
import multimix.distributed as D
from multimix.engine import train
from multimix.engine.checkpoint import load_checkpoint


def distilled(model, name="multimix", **kw):
    distill = multimix.SelfDistillation(model, momentum=0.5, warmup_steps=2)
    if name == "mixupe":
        return multimix.MixupE(multimix.InputMixup(distill=distill, generator=torch.Generator().manual_seed(0)))
    if name in ("multimix", "dense_multimix"):
        kw.setdefault("n", 16)
    return multimix.create_method(name, distill=distill, generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("name", ["multimix", "mixupe"])
def test_state_dict_holds_the_teacher_and_restores_it(name, tiny_model, tiny_batch):
    x, y = tiny_batch
    method = distilled(tiny_model, name)
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
    method.attach(opt, tiny_model)
    for _ in range(3):
        opt.zero_grad()
        method(tiny_model, x, y).backward()
        opt.step()
    state = method.state_dict()
    teacher_keys = [k for k in state if ".teacher." in k or k.startswith("distill.teacher.")]
    assert len(teacher_keys) == len(tiny_model.state_dict())  # the teacher is saved once (MixupE: its base's)
    fresh = distilled(type(tiny_model)(), name)  # another random initialisation
    fresh.load_state_dict(state)
    assert fresh.distill.updates == method.distill.updates == 3 and fresh.steps == 3
    for (k, a), b in zip(method.distill.teacher.state_dict().items(), fresh.distill.teacher.state_dict().values()):
        assert torch.equal(a, b), k
    buffer = io.BytesIO()
    torch.save(state, buffer)  # plain tensors, numbers and dicts: weights_only loads it
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()


def test_the_teacher_moves_and_casts_with_the_method_and_predicts_in_eval_mode(tiny_model, tiny_batch):
    x, y = tiny_batch
    method = distilled(tiny_model)
    holder = torch.nn.ModuleDict({"model": tiny_model, "method": method}).double()  # as a LightningModule holds it
    assert all(p.dtype == torch.float64 for p in method.distill.teacher.parameters())
    holder.train()
    teacher = method.distill.teacher
    statistics = copy.deepcopy(teacher.state_dict())
    method.distill.update(tiny_model)
    statistics = copy.deepcopy(teacher.state_dict())
    loss = method(tiny_model, x.double(), y)  # the teacher predicts (warm-up started): with its running statistics
    assert torch.isfinite(loss) and teacher.training  # its mode follows the module's; it predicts in eval mode
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, statistics[name]), name
    with torch.no_grad():
        expected = torch.softmax(teacher.eval()(x.double()).float() / 2.0, 1)
    torch.testing.assert_close(method.distill.predict(x.double()), expected)


def test_attach_updates_the_teacher_once_per_optimiser_step_under_accumulation(tiny_model, tiny_batch):
    """Two micro-batches per step, as gradient accumulation does: the teacher follows the optimiser, not the
    batches; a second attach replaces the first hook (no double updates)."""
    x, y = tiny_batch
    method = distilled(tiny_model)
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    method.attach(opt, tiny_model)
    method.attach(opt, tiny_model)
    for step in range(3):
        for half in (slice(0, 4), slice(4, 8)):
            (method(tiny_model, x[half], y[half]) / 2).backward()
        opt.step()
        opt.zero_grad()
    assert method.steps == method.distill.updates == 3
    method.detach()
    opt.step()
    assert method.steps == 3


def test_one_generator_setting_it_later_takes_effect(tiny_model, tiny_batch):
    """The method's generator is the one Λ is drawn from: set after construction, it is used (no inner copy)."""
    x, y = tiny_batch
    model = tiny_model.eval()
    for name in ("multimix", "dense_multimix", "mixupe", "cutmix"):
        kw = {"n": 16} if "multimix" in name else {}
        built = multimix.create_method(name, generator=torch.Generator().manual_seed(5), **kw)
        later = multimix.create_method(name, **kw)
        later.generator = torch.Generator().manual_seed(5)
        torch.testing.assert_close(later(model, x, y), built(model, x, y), msg=name)


def test_without_a_generator_each_rank_draws_differently_and_a_seeded_run_repeats(tiny_model, tiny_batch, monkeypatch):
    x, y = tiny_batch
    model = tiny_model.eval()

    def loss_on_rank(rank):
        monkeypatch.setattr(D, "rank", lambda: rank)
        torch.manual_seed(7)  # as lightning.seed_everything does on every process
        return multimix.create_method("multimix", n=16)(model, x, y)

    assert torch.equal(loss_on_rank(0), loss_on_rank(0))
    assert not torch.equal(loss_on_rank(0), loss_on_rank(1))


def test_a_method_checks_its_own_needs(tiny_model):
    with pytest.raises(ValueError, match="method 'dense_multimix' needs inputs with positions.*shape \\(14,\\)"):
        multimix.create_method("dense_multimix").check_data((14,), dataset="adult")
    multimix.create_method("multimix").check_data((14,))
    with pytest.warns(UserWarning, match="warm-up \\(200 steps\\) is longer than the run \\(50"):
        multimix.ERM(distill=multimix.SelfDistillation(tiny_model)).check_steps(50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multimix.ERM(distill=multimix.SelfDistillation(tiny_model)).check_steps(500)


def test_dense_multimix_warns_when_the_features_have_a_single_position(tiny_model):
    x, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 3])  # length 3 -> 1 position after two stride-2 stages
    method = multimix.create_method("dense_multimix", n=8)
    with pytest.warns(UserWarning, match="single position"):
        method(tiny_model, x, y)


def test_a_checkpoint_with_the_teacher_in_its_own_entry_still_resumes(tmp_path, tiny):
    """multimix <= 0.1 saved {"teacher": {"teacher": weights, "updates": n}} and no method state: resuming from it
    gives exactly the run resumed from today's checkpoint."""
    common = dict(method="multimix", method_args={"n": 16}, distill={"momentum": 0.9, "warmup_steps": 2}, epochs=2)
    first = dataclasses.replace(tiny(tmp_path, out_dir=str(tmp_path / "new"), **common), stop_after_epochs=1)
    train(first)
    (tmp_path / "old").mkdir()
    state = load_checkpoint(tmp_path / "new" / "last.pt")
    old = copy.deepcopy(state)
    method_state = old.pop("method")
    old["teacher"] = {"teacher": {k[len("distill.teacher."):]: v for k, v in method_state.items()
                                  if k.startswith("distill.teacher.")},
                      "updates": method_state["distill._extra_state"]["updates"]}
    torch.save(old, tmp_path / "old" / "last.pt")
    ends = []
    for name in ("new", "old"):
        summary = train(tiny(tmp_path, out_dir=str(tmp_path / name), resume=True, **common))
        assert summary["status"] == "completed"
        ends.append(load_checkpoint(tmp_path / name / "last.pt"))
    assert ends[1]["method"]["distill._extra_state"] == {"updates": 6}
    assert ends[1]["method"]["_extra_state"] == {"steps": 6, "host_draws": 0}
    for key, value in ends[0]["method"].items():
        assert torch.equal(value, ends[1]["method"][key]) if torch.is_tensor(value) else value == ends[1]["method"][key]
    for key, value in ends[0]["model"].items():
        assert torch.equal(value, ends[1]["model"][key]), key


def test_a_distill_setting_added_later_does_not_make_an_old_checkpoint_another_run(tiny):
    """Checkpoints written before separate_term existed carry a distill mapping without it: the same run."""
    from pathlib import Path

    from multimix.engine.identity import config_differences

    config = tiny(Path("."), method="multimix", distill=dict(multimix.SelfDistillation.DEFAULTS))
    saved = config.to_dict()
    saved["distill"] = {k: v for k, v in saved["distill"].items() if k != "separate_term"}
    assert config_differences(saved, config) == []
    saved["distill"]["weight"] = 0.5
    assert config_differences(saved, config) == ["distill: " + repr({**config.distill, "weight": 0.5}) + " → "
                                                 + repr(config.distill)]
