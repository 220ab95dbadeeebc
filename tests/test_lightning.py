"""MultiMix in a real lightning.Trainer (CPU): MNIST-1D, gradient accumulation, resume, precision, 2-process DDP.

The module under test is examples/lightning_mnist1d.py (what the README runs) over
multimix.integrations.lightning.MethodMixin.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script
import torch

L = pytest.importorskip("lightning")

from torch.utils.data import DataLoader  # noqa: E402

from multimix.data import load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lightning_mnist1d.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


def trainer(**kw):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    return L.Trainer(**{**base, **kw})


def loader(num_train=256, batch_size=64, shuffle=True):
    splits = load_dataset("mnist1d", num_train=num_train, num_test=64)
    return DataLoader(splits.train, batch_size=batch_size, shuffle=shuffle, drop_last=True)


def test_mnist1d_run_learns_and_the_teacher_follows_the_optimiser(example):
    result = example.main(["--epochs", "3", "--num-train", "1024", "--num-test", "500", "--batch-size", "64"])
    assert result["global_step"] == 3 * 1024 // 64 == result["method_steps"] == result["teacher_updates"]
    assert result["first_draw"]["columns"] == 64  # one process: Λ mixes its own batch
    assert result["test_accuracy"] > 25  # chance is 10%


def test_gradient_accumulation_updates_the_teacher_once_per_optimiser_step(example):
    """4 batches per epoch, 2 per optimiser step, 2 epochs: 4 steps, 4 teacher updates (not 8)."""
    result = example.main(["--epochs", "2", "--num-train", "512", "--num-test", "64", "--accumulate", "2"])
    assert result["global_step"] == 4 == result["method_steps"] == result["teacher_updates"]


def test_resume_from_a_lightning_checkpoint_continues_the_same_teacher(example, tmp_path):
    L.seed_everything(0, verbose=False)
    first = example.LitMultiMix(n=32, width=8, warmup_steps=2)
    fit = trainer(max_epochs=1)
    fit.fit(first, loader())
    path = tmp_path / "epoch1.ckpt"
    fit.save_checkpoint(path)
    saved = {k: v.clone() for k, v in first.method.distill.teacher.state_dict().items()}
    assert first.method.distill.updates == 4

    seen = {}

    class AtStart(L.Callback):
        def on_train_start(self, trainer, module):
            seen["teacher"] = {k: v.clone() for k, v in module.method.distill.teacher.state_dict().items()}
            seen["updates"], seen["steps"] = module.method.distill.updates, module.method.steps

    second = example.LitMultiMix(n=32, width=8, warmup_steps=2)  # a fresh random teacher until restored
    assert any(not torch.equal(v, saved[k]) for k, v in second.method.distill.teacher.state_dict().items())
    trainer(max_epochs=2, callbacks=[AtStart()]).fit(second, loader(), ckpt_path=path)
    assert seen["updates"] == seen["steps"] == 4
    for name, value in saved.items():
        assert torch.equal(seen["teacher"][name], value), name
    assert second.method.distill.updates == second.method.steps == 8  # and it went on from there
    loaded = example.LitMultiMix.load_from_checkpoint(path)
    assert loaded.method.distill.updates == 4
    for name, value in saved.items():
        assert torch.equal(loaded.method.distill.teacher.state_dict()[name], value), name


def test_a_resumed_fit_ends_bit_identical_to_an_uninterrupted_one(example, tmp_path):
    """4 steps in one fit against 2 steps, a checkpoint, and 2 more steps resumed from it in a fresh module: the same
    Λ stream (the method's generator is in the checkpoint), so the same final parameters, teacher included."""
    data = loader(num_train=128, batch_size=64, shuffle=False)  # 2 steps per epoch, the same order every epoch
    L.seed_everything(0, verbose=False)
    straight = example.LitMultiMix(n=32, width=8, warmup_steps=2)
    trainer(max_epochs=2).fit(straight, data)

    L.seed_everything(0, verbose=False)
    first = example.LitMultiMix(n=32, width=8, warmup_steps=2)
    fit = trainer(max_epochs=1)
    fit.fit(first, data)
    path = tmp_path / "step2.ckpt"
    fit.save_checkpoint(path)
    L.seed_everything(0, verbose=False)  # a new process, started the same way
    resumed = example.LitMultiMix(n=32, width=8, warmup_steps=2)
    trainer(max_epochs=2).fit(resumed, data, ckpt_path=path)

    assert straight.method.steps == resumed.method.steps == 4
    want, got = straight.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for name, value in want.items():  # weights, buffers, and the method's extra state (its step count)
        assert (torch.equal(got[name], value) if isinstance(value, torch.Tensor) else got[name] == value), name
    assert torch.equal(straight.method.generator.get_state(), resumed.method.generator.get_state())


def test_a_checkpoint_with_a_malformed_generator_entry_is_refused_in_one_line(example):
    from multimix.integrations.lightning import GENERATORS_KEY

    lit = example.LitMultiMix(n=32, width=8)
    with pytest.raises(ValueError, match=f"checkpoint entry '{GENERATORS_KEY}' must be a list of generator states"):
        lit.on_load_checkpoint({GENERATORS_KEY: "not states"})
    with pytest.warns(UserWarning, match="stream of 2 process"):
        lit.on_load_checkpoint({GENERATORS_KEY: [None, None]})


@pytest.mark.parametrize("precision,dtype", [("bf16-true", torch.bfloat16), ("64-true", torch.float64)])
def test_the_teacher_is_cast_with_the_model_under_true_precision(example, precision, dtype):
    L.seed_everything(0, verbose=False)
    lit = example.LitMultiMix(n=32, width=8, warmup_steps=1)
    fit = trainer(max_epochs=1, precision=precision)
    fit.fit(lit, loader(num_train=192))
    assert {p.dtype for p in lit.method.distill.teacher.parameters()} == {dtype}
    assert {p.dtype for p in lit.model.parameters()} == {dtype}
    assert lit.method.distill.updates == fit.global_step == 3
    assert math.isfinite(float(fit.callback_metrics["train_loss"]))


def test_two_process_ddp_mixes_the_global_batch_with_distinct_draws(tmp_path):
    load_dataset("mnist1d", num_train=512, num_test=64)  # into the session's cache before both processes read it
    record = tmp_path / "rank"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--epochs", "2", "--num-train", "512", "--num-test", "64",
                           "--batch-size", "64", "--num-mix", "64", "--width", "8", "--devices", "2",
                           "--strategy", "ddp", "--mix-scope", "global", "--record", str(record)],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:  # each process: 256 examples in 4 batches of 64 per epoch
        assert r["global_step"] == r["method_steps"] == r["teacher_updates"] == 8
        assert r["first_draw"]["columns"] == 128  # Λ spans the global batch, gathered from both processes
    assert ranks[0]["first_draw"] != ranks[1]["first_draw"]  # each process draws its own Λ
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas equal
    assert ranks[0]["teacher"] == ranks[1]["teacher"]
