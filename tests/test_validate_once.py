"""A run's TrainConfig is validated once, at the boundary; the code below trusts it, a library user's is checked."""

import dataclasses

import pytest

from multimix.cli import main
from multimix.engine import TrainConfig, Trainer, train


@pytest.fixture
def validations(monkeypatch):
    """The configs TrainConfig.validate was called on, in order."""
    seen = []
    original = TrainConfig.validate

    def counting(self, source=""):
        seen.append(self)
        return original(self, source)

    monkeypatch.setattr(TrainConfig, "validate", counting)
    return seen


def test_one_cli_train_run_validates_its_config_once(validations, tmp_path):
    assert main(["train", "--dataset", "mnist1d", "--num-train", "192", "--num-test", "64", "--width", "8",
                 "--batch-size", "64", "--epochs", "1", "--no-progress", "--device", "cpu",
                 "--out-dir", str(tmp_path / "run")]) == 0
    assert len(validations) == 1


def test_the_library_train_validates_once(validations, tiny, tmp_path):
    summary = train(tiny(tmp_path, device="cpu"))
    assert summary["status"] == "completed" and len(validations) == 1


def test_a_trainer_of_an_unchecked_or_changed_config_still_refuses_it_in_one_line(tiny, tmp_path):
    with pytest.raises(ValueError, match="^lr must be a finite number > 0, got -1.0$"):
        Trainer(tiny(tmp_path, lr=-1.0))
    config = tiny(tmp_path).validate()
    assert config.validated
    config.epochs = 0  # changed after validation: no longer trusted
    assert not config.validated
    with pytest.raises(ValueError, match="^epochs must be >= 1, got 0$"):
        Trainer(config)
    copy = dataclasses.replace(tiny(tmp_path).validate(), batch_size=0)  # a copy is not validated
    with pytest.raises(ValueError, match="^batch_size must be >= 1"):
        Trainer(copy)
