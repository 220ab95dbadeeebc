"""A run without --model trains its data family's model, and the resolved name is what the run records.

Each family trains one tiny epoch through the command line on data written in its real format (the writers of
tests/test_eval_families.py), with no --model flag.
"""

import json

import pytest

from multimix.cli import main
from multimix.engine import TrainConfig, load_trained
from multimix.engine.checkpoint import load_checkpoint
from multimix.experiments.sweep import Run
from multimix.models import CNN1D, GCN, MLP, PreActResNet, SpeechCNN

from test_eval_families import family_args


def without_model(flags):
    """The flags with their --model NAME pair taken out."""
    if "--model" not in flags:
        return flags
    i = flags.index("--model")
    return flags[:i] + flags[i + 2:]


@pytest.mark.parametrize("family,model,cls", [
    ("mnist1d", "cnn1d", CNN1D),
    ("images", "preact_resnet18", PreActResNet),
    ("adult", "mlp", MLP),
    ("fsdd", "speech_cnn", SpeechCNN),
    ("planetoid", "gcn", GCN),
])
def test_train_without_model_trains_the_familys_model(family, model, cls, tmp_path, image_folder, monkeypatch,
                                                      capsys):
    monkeypatch.setenv("MULTIMIX_CACHE", str(tmp_path / "cache"))
    _, flags = family_args(family, tmp_path, image_folder)
    run = tmp_path / "run"
    status = main(["train", *without_model(flags), "--epochs", "1", "--no-progress", "--device", "cpu",
                   "--out-dir", str(run)])
    assert status == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["model"] == model
    assert load_checkpoint(run / "last.pt")["config"]["model"] == model
    config, _, trained = load_trained(run / "last.pt")
    assert config.model == model and isinstance(trained, cls)
    assert summary["num_parameters"] == sum(p.numel() for p in trained.parameters())


def test_model_help_names_each_familys_default(capsys):
    main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("default (none given): the data family's, cnn1d for mnist1d, preact_resnet18 for cifar10, "
            "preact_resnet18 for cifar100, preact_resnet18 for imagefolder, mlp for adult, speech_cnn for fsdd, "
            "gcn for planetoid") in text


def test_validation_resolves_the_model_once_into_the_config():
    config = TrainConfig(dataset="planetoid:CiteSeer")
    assert config.model is None and config.to_dict()["model"] is None
    assert config.validate().to_dict()["model"] == "gcn"
    assert TrainConfig(dataset="adult", model="mlp").validate().model == "mlp"
    assert TrainConfig.from_dict({"dataset": "fsdd"}).model == "speech_cnn"  # a recipe without a model
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        TrainConfig(dataset="adult", model="nope").validate()


def test_sweep_ids_of_configs_that_name_their_model_do_not_change():
    """Ids computed before the model became optional: the bench and tune records on disk stay valid."""
    tune = TrainConfig(dataset="mnist1d", model="cnn1d", width=8, num_train=192, epochs=2).validate()
    assert Run(tune, {"kind": "tune"}).id == "tune-erm-seed0-dc4e49f7f3ad"
    test = TrainConfig(dataset="adult", model="mlp", method="multimix", method_args={"n": 64}).validate()
    role = {"kind": "test", "pgd_steps": 7, "attack_limit": 1000}
    assert Run(test, role).id == "test-multimix-seed0-41eb5e245686"
    # the family's default, resolved, is the same run as naming it
    assert Run(TrainConfig(dataset="mnist1d", width=8, num_train=192, epochs=2).validate(), {"kind": "tune"}).id \
        == "tune-erm-seed0-dc4e49f7f3ad"
