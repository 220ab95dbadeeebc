"""The bench entries and the tuning grid: YAML files checked against the method settings when loaded."""

import dataclasses
from pathlib import Path

import pytest
import torch

from multimix.experiments.bench import DEFAULT_ENTRIES
from multimix.experiments.entries import ENTRIES_PATH, GRID_PATH, BenchEntry, TuneSpec, load_entries, load_grid
from multimix.experiments.tune import DEFAULT_GRID, GRID_SIZE
from multimix.methods import METHODS, SelfDistillation, create_method


def write(tmp_path, text, name="entries.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_entries_load():
    entries = load_entries(ENTRIES_PATH)
    assert entries == DEFAULT_ENTRIES and len(entries) >= 2
    assert all(isinstance(e, BenchEntry) for e in entries)
    labels = [e.label for e in entries]
    assert len(set(labels)) == len(labels) and labels[0] == "ERM"
    # every method is compared, but GraphMix, a semi-supervised method for graphs (graph_grid, graphmix_grid)
    assert {e.method for e in entries} == set(METHODS) - {"graphmix"}
    assert any(e.ours for e in entries) and not any(e.ours for e in entries if e.method == "erm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entries[0].label = "changed"


def built(entry: BenchEntry):
    """The method ``entry`` describes, with its teacher if it has one."""
    distill = SelfDistillation(torch.nn.Linear(2, 10), **entry.distill) if entry.distill is not None else None
    return create_method(entry.method, num_classes=10, distill=distill, **entry.method_args)


@pytest.mark.parametrize("entry", DEFAULT_ENTRIES, ids=[e.label for e in DEFAULT_ENTRIES])
def test_every_entry_builds_its_method(entry):
    assert isinstance(built(entry), METHODS[entry.method])


def test_bundled_grid_loads():
    grid = load_grid(GRID_PATH)
    assert grid == DEFAULT_GRID and all(isinstance(spec, TuneSpec) for spec in grid)
    for spec in grid:
        # the same budget for every method with something to tune
        assert len(spec.candidates) == (1 if spec.method == "erm" else GRID_SIZE), spec.label
        for args, distill in spec.candidates:
            create_method(spec.method, num_classes=10, **{**spec.fixed, **args})
            if distill is not None:
                SelfDistillation(torch.nn.Linear(2, 10), **distill)
    labels = [spec.label for spec in grid]
    for spec in grid:
        if spec.inherit is not None:
            assert labels.index(spec.inherit) < labels.index(spec.label)


@pytest.mark.parametrize("text,error,match", [
    ("- {label: ERM, method: erm}\n- {label: Bogus, method: mixupp}\n", ValueError,
     r"entry 2: unknown method 'mixupp'; valid methods: erm"),
    ("- {label: Mix, method: mixup, method_args: {n: 10}}\n", ValueError,
     r"entry 1 method_args of 'mixup' has unknown key 'n' \(n belongs to multimix, dense_multimix, graphmix\); "
     r"valid keys: alpha, label_smoothing"),
    ("- {label: Mix, method: mixup, method_args: {alpha: high}}\n", TypeError,
     r"entry 1 method_args of 'mixup'\.alpha must be float, got 'high'"),
    ("- {label: MM, method: multimix, method_args: {n: 1.5}}\n", TypeError, r"entry 1 .*\.n must be int"),
    ("- {label: SD, method: multimix, distill: {momentum: 0.9, temprature: 1}}\n", ValueError,
     r"entry 1 distill has unknown key 'temprature'"),
    ("- {label: ERM, method: erm, colour: red}\n", ValueError, r"entry 1 has unknown keys \['colour'\]"),
    ("- {method: erm}\n", ValueError, r"entry 1 needs a label"),
    ("[]\n", ValueError, r"must be a non-empty YAML list"),
])
def test_bad_entries_name_the_entry(tmp_path, text, error, match):
    path = write(tmp_path, text)
    with pytest.raises(error, match=match) as err:
        load_entries(path)
    assert str(path) in str(err.value)


def test_a_good_entries_file(tmp_path):
    path = write(tmp_path, "- {label: A, method: mixup, method_args: {alpha: 0.3}, ours: true}\n"
                           "- {label: B, method: multimix, distill: {weight: 0.5}}\n")
    assert load_entries(path) == [BenchEntry("A", "mixup", {"alpha": 0.3}, None, True),
                                  BenchEntry("B", "multimix", {}, {"weight": 0.5}, False)]


def test_grid_inherit_must_name_an_earlier_label(tmp_path):
    path = write(tmp_path, "- {label: SD, method: multimix, inherit: MultiMix, candidates: [{distill: {weight: 0.5}}]}\n"
                           "- {label: MultiMix, method: multimix, candidates: [{n: 10}]}\n", "grid.yaml")
    with pytest.raises(ValueError, match=r"spec 1 \(SD\) inherits from 'MultiMix', which must be listed before it"):
        load_grid(path)
    fixed = write(tmp_path, "- {label: MultiMix, method: multimix, candidates: [{n: 10}]}\n"
                            "- {label: SD, method: multimix, inherit: MultiMix, candidates: [{distill: {weight: 0.5}}]}\n",
                  "fixed.yaml")
    first, second = load_grid(fixed)
    assert second.inherit == "MultiMix" and second.candidates == [({}, {"weight": 0.5})]


@pytest.mark.parametrize("text,match", [
    ("- {label: M, method: mixup, candidates: [{alpha: 0.1}, {n: 3}]}\n", r"spec 1 \(M\) candidate 2 .*unknown key 'n'"),
    ("- {label: M, method: mixup, candidates: []}\n", r"spec 1 \(M\) needs at least one candidate"),
    ("- {label: D, method: dense_multimix, fixed: {pooled_weight: none}, candidates: [{}]}\n",
     r"spec 1 \(D\) fixed .*pooled_weight must be float"),
])
def test_bad_grid_specs_name_the_spec(tmp_path, text, match):
    with pytest.raises((TypeError, ValueError), match=match):
        load_grid(write(tmp_path, text, "grid.yaml"))


@pytest.mark.parametrize("path", sorted(GRID_PATH.parent.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bundled_bench_file_loads_and_builds_its_methods(path):
    """Grids (``*grid*.yaml``) and entries files alike: every setting is checked against its method."""
    if "grid" in path.stem:
        assert load_grid(path)
        return
    for entry in load_entries(path):
        assert isinstance(built(entry), METHODS[entry.method])


def test_bundled_yaml_files_are_package_data():
    """Every YAML file the package reads (recipes, bench entries, grid) is shipped by a non-editable install."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    package = root / "src" / "multimix"
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["multimix"]
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    needed = set((package / "configs").rglob("*.yaml"))
    assert ENTRIES_PATH in needed and GRID_PATH in needed
    missing = sorted(str(p.relative_to(package)) for p in needed - shipped)
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"


@pytest.mark.parametrize("path", [GRID_PATH.with_name(f"{name}.yaml") for name in ("grid", "tabular_grid", "graph_grid",
                                                                                 "graphmix_grid")])
def test_every_tuning_candidate_is_a_distinct_setting(path):
    """Candidates that differ only by restating a default would give a method fewer real candidates.

    Compared as built: the method's repr shows every setting after defaults are resolved (e.g. clean_weight).
    """
    for spec in load_grid(path):
        built = [(repr(create_method(spec.method, num_classes=10, **{**spec.fixed, **args})), repr(distill))
                 for args, distill in spec.candidates]
        assert len(set(built)) == len(built), f"{spec.label}: two candidates are the same setting: {built}"
