"""multimix.checks: good values come back normalised; bad ones raise the right exception, naming the argument."""

import math
import typing
from pathlib import Path
from typing import List, Literal, Optional, Sequence

import pytest
import torch

from multimix.checks import (check_choice, check_generator, check_int, check_label_smoothing, check_non_negative,
                             check_number, check_path, check_positive, check_positive_int, check_probability,
                             check_type, describe_type)

NAN, INF = float("nan"), float("inf")


def test_check_number():
    assert check_number(3, "x") == 3.0 and type(check_number(3, "x")) is float
    assert check_number(0.5, "x", minimum=0, maximum=1) == 0.5
    assert check_number(0, "x", minimum=0) == 0.0
    for bad, error in ((True, TypeError), ("1", TypeError), (None, TypeError), (NAN, ValueError), (INF, ValueError),
                       (-INF, ValueError)):
        with pytest.raises(error, match="^speed must be a finite number"):
            check_number(bad, "speed")
    with pytest.raises(ValueError, match=r"x must be a finite number > 0, got 0.0"):
        check_number(0, "x", minimum=0, exclusive=True)
    with pytest.raises(ValueError, match=r"x must be a finite number >= 0 and < 1, got 1.0"):
        check_number(1, "x", minimum=0, maximum=1, maximum_exclusive=True)
    with pytest.raises(ValueError, match=r"<= 1, got 1.5"):
        check_number(1.5, "x", maximum=1)


@pytest.mark.parametrize("check,good,zero_ok", [(check_positive, 2, False), (check_non_negative, 2, True)])
def test_check_positive_and_non_negative(check, good, zero_ok):
    assert check(good, "lr") == 2.0 and type(check(good, "lr")) is float
    assert check(1e-12, "lr") == 1e-12
    if zero_ok:
        assert check(0, "lr") == 0.0
    else:
        with pytest.raises(ValueError, match="lr"):
            check(0, "lr")
    for bad in (-1, NAN, INF):
        with pytest.raises(ValueError, match="^lr must be"):
            check(bad, "lr")
    for bad in (True, False, "2", None, [2]):
        with pytest.raises(TypeError, match="^lr must be"):
            check(bad, "lr")


def test_check_int_and_positive_int():
    assert check_int(0, "k", 0) == 0 and check_int(7, "k", 3) == 7
    assert check_positive_int(1, "n") == 1
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        check_positive_int(0, "n")
    with pytest.raises(ValueError, match="k must be an integer >= 3, got 2"):
        check_int(2, "k", 3)
    for bad in (True, 2.0, "2", None, NAN):
        with pytest.raises(TypeError, match="^n must be an integer"):
            check_positive_int(bad, "n")


def test_check_probability():
    assert check_probability(0, "p") == 0.0 and check_probability(1, "p") == 1.0 and check_probability(0.25, "p") == 0.25
    for bad in (-0.01, 1.01, NAN, INF):
        with pytest.raises(ValueError, match="^p must be"):
            check_probability(bad, "p")
    with pytest.raises(TypeError, match="^p must be"):
        check_probability(True, "p")


def test_check_label_smoothing():
    assert check_label_smoothing(0) == 0.0 and check_label_smoothing(0.1) == 0.1
    for bad in (1.0, -0.1, NAN, INF):
        with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\)"):
            check_label_smoothing(bad)
    # Wrong types are refused too (as ValueError today, unlike the module's TypeError convention).
    for bad in (True, "0.1", None):
        with pytest.raises((TypeError, ValueError), match=r"^label_smoothing must be"):
            check_label_smoothing(bad)
    with pytest.raises(ValueError, match="^eps must be"):
        check_label_smoothing(2, "eps")


def test_check_choice():
    assert check_choice("self", "attention", ("uniform", "self")) == "self"
    with pytest.raises(ValueError, match="attention must be one of 'uniform', 'self'; got 'cam'"):
        check_choice("cam", "attention", ["uniform", "self"])


def test_check_generator():
    check_generator(None)
    check_generator(torch.Generator())
    with pytest.raises(TypeError, match="gen must be a torch.Generator or None, got int"):
        check_generator(0, "gen")


def test_check_path(tmp_path):
    assert check_path("a/b", "where") == Path("a/b")
    assert check_path(tmp_path) == tmp_path and isinstance(check_path(str(tmp_path)), Path)
    with pytest.raises(TypeError, match="where must be a str or os.PathLike, got int"):
        check_path(3, "where")


def test_describe_type():
    assert describe_type(float) == "float"
    assert describe_type(Optional[int]) == "int or None"
    assert describe_type(Literal["a", "b"]) == "one of 'a', 'b'"
    assert describe_type(List[int]) == "list of int" and describe_type(Sequence[float]) == "list of float"
    assert describe_type(typing.Dict[str, int]) == "mapping"


def test_check_type_scalars():
    assert check_type(True, bool, "flag") is True
    with pytest.raises(TypeError, match="flag must be bool, got 'false'"):
        check_type("false", bool, "flag")  # a YAML string, not a bool
    with pytest.raises(TypeError, match="flag must be bool, got 0"):
        check_type(0, bool, "flag")
    assert check_type(3, int, "n") == 3
    for bad in (True, 3.0, "3"):
        with pytest.raises(TypeError, match="n must be int"):
            check_type(bad, int, "n")
    assert check_type(3, float, "lr") == 3  # an int is a float
    with pytest.raises(TypeError, match="lr must be float, got True"):
        check_type(True, float, "lr")
    with pytest.raises(TypeError, match="name must be str"):
        check_type(1, str, "name")
    assert check_type(object, typing.Any, "anything") is object


def test_check_type_optional_literal_and_lists():
    assert check_type(None, Optional[float], "alpha") is None
    assert check_type(0.5, Optional[float], "alpha") == 0.5
    with pytest.raises(TypeError, match="alpha must be float or None, got 'x'"):
        check_type("x", Optional[float], "alpha")
    assert check_type("cam", Literal["self", "cam"], "attention") == "cam"
    with pytest.raises(ValueError, match="attention must be one of 'self', 'cam', got 'spatial'"):
        check_type("spatial", Literal["self", "cam"], "attention")
    with pytest.raises(ValueError, match="version must be one of 3, 4, got True"):
        check_type(True, Literal[3, 4], "version")  # True == 1 but is not one of the choices' type
    with pytest.raises(ValueError, match="version"):
        check_type(3.0, Literal[3, 4], "version")
    assert check_type([0, 2], List[int], "layers") == [0, 2]
    assert check_type((0, 2), Sequence[int], "layers") == (0, 2)
    with pytest.raises(TypeError, match=r"layers\[1\] must be int, got 1.5"):
        check_type([0, 1.5], List[int], "layers")
    with pytest.raises(TypeError, match="layers must be list of int, got 3"):
        check_type(3, List[int], "layers")
    with pytest.raises(TypeError, match="layers must be list of int"):
        check_type("012", List[int], "layers")
    assert check_type({"a": 1}, typing.Dict[str, typing.Any], "args") == {"a": 1}
    with pytest.raises(TypeError, match="args must be a mapping"):
        check_type([("a", 1)], typing.Dict[str, typing.Any], "args")
    assert check_type(None, Optional[typing.Dict[str, typing.Any]], "distill") is None
    assert not math.isnan(check_type(2, Optional[float], "x"))
