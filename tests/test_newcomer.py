"""The newcomer's path: subpackages after `import multimix`, a default model per data family, one meaning per flag."""

import subprocess
import sys
from pathlib import Path

import pytest

from multimix.cli import main
from multimix.engine import TrainConfig
from multimix.engine.build import model_name
from multimix.models import DEFAULT_MODELS, default_model_for

ROOT = Path(__file__).resolve().parents[1]


def test_subpackages_load_on_first_use_after_import_multimix():
    code = ("import sys, multimix; assert 'multimix.models' not in sys.modules; "
            "print(multimix.models.cnn1d.__name__, multimix.integrations.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["cnn1d", "multimix.integrations"]


@pytest.mark.parametrize("dataset,model", [("planetoid:CiteSeer", "gcn"), ("adult", "mlp"), ("fsdd", "speech_cnn"),
                                           ("mnist1d", "cnn1d"), ("cifar10", "preact_resnet18")])
def test_each_data_family_has_a_default_model(dataset, model):
    assert default_model_for(dataset) == model
    assert model_name(TrainConfig(dataset=dataset, model=None)) == model  # what the run builds without --model
    assert model_name(TrainConfig(dataset=dataset, model="mlp")) == "mlp"


def test_every_data_family_has_a_default_model():
    from multimix.data import DATASETS

    assert set(DATASETS) == set(DEFAULT_MODELS)
    with pytest.raises(ValueError, match="no default model for dataset 'nope'"):
        default_model_for("nope")


def test_alpha_help_names_both_meanings(capsys):
    main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "α of Beta(α, α) (mixup, cutmix, manifold_mixup, mixupe); Dirichlet concentration α" in text
