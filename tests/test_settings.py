"""Method settings read from the constructors: defaults, types and help agree with the code, and every user
surface (create_method, the command line's flags) derives from them."""

import argparse
import inspect
import typing

import pytest

import multimix
from multimix.cli import FLAG_NAMES, config_from_args, train_parser
from multimix.methods import (METHODS, SelfDistillation, create_method, distill_settings, method_settings,
                              methods_taking)
from multimix.methods.mixupe import BASES
from multimix.methods.settings import Setting, check_settings, parse_docstring_args, settings_of


def declaring_classes(name):
    """The classes whose constructors a method's settings come from, in the order settings are read."""
    cls = METHODS[name]
    classes = [cls] + ([cls.mix_class] if hasattr(cls, "mix_class") else [])
    return classes + (list(BASES.values()) if name == "mixupe" else [])


def signature_parameter(classes, key):
    """(parameter, type hint) of the first ``__init__`` along the classes' MROs that declares ``key``."""
    for cls in classes:
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            parameters = inspect.signature(init).parameters
            if key in parameters:
                hints = typing.get_type_hints(init, globalns=vars(inspect.getmodule(klass)))
                return parameters[key], hints.get(key, typing.Any)
    raise AssertionError(f"no constructor declares {key}")


@pytest.mark.parametrize("name", list(METHODS))
def test_settings_match_the_constructor_signatures(name):
    settings = method_settings(name)
    assert settings, name
    for key, setting in settings.items():
        assert isinstance(setting, Setting) and setting.name == key
        parameter, hint = signature_parameter(declaring_classes(name), key)
        plain = parameter.default is inspect.Parameter.empty or parameter.default is None or \
            isinstance(parameter.default, (bool, int, float, str, tuple))
        assert setting.default == (parameter.default if plain else None), (name, key)
        assert setting.annotation == hint, (name, key)
    assert not {"num_classes", "generator", "distill", "model", "self"} & set(settings)


def test_defaults_by_hand():
    assert inspect.signature(multimix.MultiMix).parameters["n"].default == 1000
    assert method_settings("multimix")["n"].default == 1000
    assert method_settings("multimix")["n"].annotation is int
    assert inspect.signature(multimix.DenseMultiMix).parameters["pooled_weight"].default == 3.0
    assert method_settings("dense_multimix")["pooled_weight"].default == 3.0
    layers = inspect.signature(multimix.ManifoldMixup).parameters["layers"].default
    assert layers == (0, 1, 2) and method_settings("manifold_mixup")["layers"].default == layers
    assert method_settings("manifold_mixup")["layers"].type_name == "list of int"
    assert inspect.signature(multimix.MixupE).parameters["eta"].default == 1e-3
    assert method_settings("mixupe")["eta"].default == 1e-3
    assert method_settings("mixupe")["version"].type_name == "one of 3, 4"
    assert method_settings("erm") == {"label_smoothing": method_settings("mixup")["label_smoothing"]}


def test_every_setting_has_help():
    for name in METHODS:
        for key, setting in method_settings(name).items():
            assert setting.help.strip(), (name, key)
    for key, setting in distill_settings().items():
        assert setting.help.strip(), key


def test_distill_defaults_are_the_signature_defaults():
    parameters = inspect.signature(SelfDistillation).parameters
    expected = {k: p.default for k, p in parameters.items() if k != "model"}
    assert SelfDistillation.DEFAULTS == expected
    assert {k: s.default for k, s in distill_settings().items()} == expected
    assert list(distill_settings()) == ["momentum", "temperature", "weight", "warmup_steps", "consistency_weight",
                                        "separate_term"]


def test_methods_taking():
    assert methods_taking("n") == ["multimix", "dense_multimix", "graphmix"]
    assert methods_taking("label_smoothing") == list(METHODS)
    assert methods_taking("no_such_setting") == []


def test_parse_docstring_args():
    doc = """One line.

    More prose: with a colon.

    Args:
        alpha: the first
            argument, continued.
        beta: the second.
        **kwargs: passed on.

    Call:
        x: not an argument.
    """
    assert parse_docstring_args(doc) == {"alpha": "the first argument, continued.", "beta": "the second.",
                                         "**kwargs": "passed on."}
    assert parse_docstring_args(None) == {} and parse_docstring_args("No sections.") == {}


def test_settings_of_reads_annotations_defaults_and_help():
    class Example:
        """An example.

        Args:
            size: how many. More text.
            mode: which one.
        """

        def __init__(self, size: int = 3, *, mode: typing.Literal["a", "b"] = "a", generator=None):
            pass

    settings = settings_of(Example)
    assert list(settings) == ["size", "mode"]  # generator is an object, not a setting
    assert settings["size"] == Setting("size", int, 3, "how many.")
    assert settings["mode"].type_name == "one of 'a', 'b'" and settings["mode"].default == "a"
    assert list(settings_of(Example, exclude=["size"])) == ["mode"]


def test_check_settings_messages():
    settings = method_settings("mixup")
    assert check_settings({"alpha": 0.5}, settings, "here") == {"alpha": 0.5}
    assert check_settings(None, settings, "here") == {}
    with pytest.raises(ValueError) as err:
        check_settings({"n": 5}, settings, "entry 3", owner_of=methods_taking)
    assert str(err.value) == ("entry 3 has unknown key 'n' (n belongs to multimix, dense_multimix, graphmix); "
                              "valid keys: alpha, label_smoothing")
    with pytest.raises(ValueError, match="unknown key 'n'; valid keys: alpha"):
        check_settings({"n": 5}, settings, "entry 3")  # no owner lookup: no hint
    with pytest.raises(TypeError, match=r"entry 3\.alpha must be float, got 'big'"):
        check_settings({"alpha": "big"}, settings, "entry 3")
    with pytest.raises(TypeError, match="alpha must be float, got True"):
        check_settings({"alpha": True}, settings, "entry 3")
    with pytest.raises(TypeError, match="entry 3 must be a mapping of settings, got list"):
        check_settings(["alpha"], settings, "entry 3")
    with pytest.raises(ValueError, match="attention must be one of 'uniform', 'self', 'cam', got 'spatial'"):
        check_settings({"attention": "spatial"}, method_settings("dense_multimix"), "x")
    with pytest.raises(TypeError, match=r"layers\[1\] must be int"):
        check_settings({"layers": [0, 1.5]}, method_settings("manifold_mixup"), "x")


def parser():
    root = argparse.ArgumentParser()
    sub = root.add_subparsers(dest="command")
    return root, train_parser(sub)


def test_the_cli_has_a_flag_for_every_setting():
    _, train = parser()
    flags = {action.dest: action.option_strings for action in train._actions}
    for name in METHODS:
        for key in method_settings(name):
            assert key in flags, (name, key)
            assert flags[key] == FLAG_NAMES.get(key, ["--" + key.replace("_", "-")])
    for key in distill_settings():
        assert "distill_" + key in flags, key
        assert all(flag.startswith("--distill-") for flag in flags["distill_" + key])
    assert flags["n"] == ["--num-mix", "--n"] and flags["version"] == ["--mixupe-version"]
    assert "--distill-warmup" in flags["distill_warmup_steps"] and "--mix-scope" in flags["mix_scope"]


def test_parsed_flags_have_the_settings_types():
    root, _ = parser()
    args = root.parse_args(["train", "--attention", "cam", "--pooled-weight", "1", "--layers", "0", "2",
                            "--num-mix", "64", "--attention-grad", "true", "--mixupe-version", "3",
                            "--distill-warmup", "5", "--distill-temperature", "1"])
    assert args.attention == "cam" and args.pooled_weight == 1.0 and type(args.pooled_weight) is float
    assert args.layers == [0, 2] and all(type(k) is int for k in args.layers)
    assert args.n == 64 and type(args.n) is int
    assert args.attention_grad is True and args.version == 3
    assert args.distill_warmup_steps == 5 and args.distill_temperature == 1.0
    with pytest.raises(SystemExit):
        root.parse_args(["train", "--attention", "spatial"])
    config = config_from_args(root.parse_args(["train", "--method", "dense_multimix", "--attention", "cam",
                                               "--pooled-weight", "1", "--n", "64", "--distill-weight", "0.5"]))
    assert config.method_args == {"attention": "cam", "pooled_weight": 1.0, "n": 64}
    assert config.distill == {**SelfDistillation.DEFAULTS, "weight": 0.5}


def test_create_method_rejects_unknown_settings():
    with pytest.raises(ValueError, match="method 'erm' does not take n") as err:
        create_method("erm", n=3)
    assert "label_smoothing" in str(err.value)
    with pytest.raises(ValueError, match="valid methods"):
        create_method("mixupp")
    method = create_method("mixupe", base="cutmix", alpha=1.0, num_classes=10)
    assert type(method.base).__name__ == "CutMix"
