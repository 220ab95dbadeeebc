"""TrainConfig and YAML recipes: every key and type checked before any data loads, with messages that help."""

import dataclasses

import pytest

import multimix.engine.build as build_module
from multimix.cli import main
from multimix.engine import TrainConfig, bundled_configs, load_recipe
from multimix.engine.config import read_yaml

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if any data set is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(build_module, "load_dataset", refuse)


def recipe(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_unknown_key_names_the_key_and_the_valid_keys(tmp_path, no_data):
    path = recipe(tmp_path, "method: erm\nepochz: 3\n")
    with pytest.raises(ValueError, match="unknown keys") as err:
        load_recipe(path)
    message = str(err.value)
    assert "'epochz'" in message and path in message
    assert "valid keys: " + ", ".join(FIELDS) in message


def test_a_string_is_not_a_bool(tmp_path):
    with pytest.raises(TypeError, match="augment must be bool, got 'false'"):
        load_recipe(recipe(tmp_path, 'augment: "false"\n'))
    assert load_recipe(recipe(tmp_path, "augment: false\n", "ok.yaml")) == {"augment": False}


def test_method_args_key_the_method_does_not_take(tmp_path):
    with pytest.raises(ValueError) as err:
        load_recipe(recipe(tmp_path, "method: mixup\nmethod_args: {n: 10}\n"))
    message = str(err.value)
    assert "method_args of 'mixup' has unknown key 'n'" in message
    assert "n belongs to multimix, dense_multimix" in message
    assert "valid keys: alpha, label_smoothing" in message


def test_wrong_typed_method_setting_names_the_setting_and_its_type(tmp_path):
    with pytest.raises(TypeError) as err:
        load_recipe(recipe(tmp_path, 'method: multimix\nmethod_args: {n: "many"}\n'))
    assert ".n must be int, got 'many'" in str(err.value)
    with pytest.raises(TypeError, match="n must be int"):  # a bool is not an int either
        TrainConfig.from_dict({"method": "multimix", "method_args": {"n": True}})


def test_bad_distill_key(tmp_path):
    with pytest.raises(ValueError) as err:
        load_recipe(recipe(tmp_path, "distill: {momentum: 0.9, temprature: 2.0}\n"))
    message = str(err.value)
    assert "distill has unknown key 'temprature'" in message
    assert "valid keys: momentum, temperature, weight, warmup_steps" in message
    with pytest.raises(TypeError, match="distill"):
        TrainConfig.from_dict({"distill": {"warmup_steps": 1.5}})


def test_yaml_syntax_error_and_non_utf8_name_the_file(tmp_path):
    path = recipe(tmp_path, "epochs: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML at line 2") as err:
        load_recipe(path)
    assert path in str(err.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"epochs: 3\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8") as err:
        read_yaml(binary)
    assert str(binary) in str(err.value)


def test_a_recipe_must_be_a_mapping(tmp_path):
    with pytest.raises(TypeError, match="mapping"):
        load_recipe(recipe(tmp_path, "- epochs\n- 3\n"))


@pytest.mark.parametrize("name", bundled_configs())
def test_every_bundled_recipe_loads_and_validates(name):
    data = load_recipe(name)
    config = TrainConfig.from_dict(data, source=name)
    assert config.validate() is config
    assert {k: getattr(config, k) for k in data} == data


def test_the_defaults_validate():
    config = TrainConfig()
    assert config.validate() is config


@pytest.mark.parametrize("values,match", [
    ({"lr": float("inf")}, "lr must be a finite number"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"num_train": 0}, "num_train must be >= 1"),
    ({"val_size": -1}, "val_size must be >= 0"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
    ({"schedule": "linear"}, "schedule"),
    ({"method": "mixupp"}, "valid methods"),
])
def test_bad_values_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)


def test_yaml_inf_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lr must be a finite number"):
        load_recipe(recipe(tmp_path, "lr: .inf\n"))


@pytest.mark.parametrize("text,match", [
    ("method: erm\nepochz: 3\n", "unknown keys ['epochz']"),
    ('augment: "false"\n', "augment must be bool"),
    ("method: mixup\nmethod_args: {n: 10}\n", "unknown key 'n'"),
    ('method: multimix\nmethod_args: {n: "many"}\n', "n must be int"),
    ("epochs: [1,\n", "not valid YAML"),
])
def test_the_cli_reports_a_bad_recipe_in_one_line(tmp_path, capsys, no_data, text, match):
    out = tmp_path / "out"
    assert main(["train", "--config", recipe(tmp_path, text), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists()
