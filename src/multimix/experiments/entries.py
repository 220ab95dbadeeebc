"""What ``bench`` compares and what ``tune`` selects from, as data: YAML files checked against the method settings.

``configs/bench/entries.yaml`` lists the bench's methods (:class:`BenchEntry`);
``configs/bench/grid.yaml`` the tuning candidates (:class:`TuneSpec`). Every
``method_args`` and ``distill`` mapping is checked against the settings read
from the constructors (:mod:`multimix.methods.settings`) when the file is
loaded, so a wrong key or type fails before any training, naming the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..engine.config import CONFIG_DIR, TrainConfig, read_yaml
from ..checks import brief
from ..methods import METHODS, SelfDistillation, create_method, distill_settings, method_settings, methods_taking
from ..methods.settings import check_settings

__all__ = ["BenchEntry", "TuneSpec", "Candidate", "ENTRIES_PATH", "GRID_PATH", "ENTRY_CONFIG_KEYS", "load_entries",
           "load_grid", "bench_file"]

ENTRIES_PATH = CONFIG_DIR / "bench" / "entries.yaml"
GRID_PATH = CONFIG_DIR / "bench" / "grid.yaml"

Candidate = Tuple[Dict[str, Any], Optional[Dict[str, Any]]]  # (method_args, distill)


@dataclass(frozen=True)
class BenchEntry:
    """One row of the comparison: a label, a method with its settings, optional self-distillation.

    ``config`` holds the training settings this entry changes from the bench's recipe (only
    :data:`ENTRY_CONFIG_KEYS`: ``unlabelled_batch`` for a semi-supervised entry).
    """

    label: str
    method: str
    method_args: Dict[str, Any] = field(default_factory=dict)
    distill: Optional[Dict[str, Any]] = None
    ours: bool = False
    config: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneSpec:
    """One method to tune: its label, method name, whether it is ours, and its candidates."""

    label: str
    method: str
    candidates: List[Candidate]
    ours: bool = False
    inherit: Optional[str] = None  # label whose tuned method_args each candidate starts from
    fixed: Dict[str, Any] = field(default_factory=dict)  # method_args common to every candidate
    config: Dict[str, Any] = field(default_factory=dict)  # training settings of every candidate (ENTRY_CONFIG_KEYS)


# Training settings an entry may set beside its method: what defines the method's training signal, never the
# budget (epochs, data, network), so that every entry of one comparison keeps the same budget.
ENTRY_CONFIG_KEYS = ("unlabelled_batch",)


def _config(values: Any, where: str) -> Dict[str, Any]:
    values = dict(values or {})
    unknown = sorted(set(values) - set(ENTRY_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{where} config has keys {brief(unknown)} an entry may not set; it may set: "
                         f"{', '.join(ENTRY_CONFIG_KEYS)}")
    hints = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in values.items():
        if hints[key] == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where} config {key} must be an integer >= 0, got {brief(value)}")
    return values


def _check_method(item: Mapping[str, Any], where: str) -> str:
    method = item.get("method")
    if method not in METHODS:
        raise ValueError(f"{where}: unknown method {brief(method)}; valid methods: {', '.join(METHODS)}")
    return method


def _check_keys(item: Any, cls: type, where: str) -> None:
    if not isinstance(item, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(item).__name__}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(item) - set(valid))
    if unknown:
        raise ValueError(f"{where} has unknown keys {brief(unknown)}; valid keys: {', '.join(valid)}")
    for key in ("label", "method"):
        if not isinstance(item.get(key), str):
            raise ValueError(f"{where} needs a {key} (a string)")


def _args(values: Any, method: str, where: str) -> Dict[str, Any]:
    """The checked method settings: their keys and types, then their values by the method's own constructor."""
    values = check_settings(values, method_settings(method), f"{where} method_args of {method!r}",
                            owner_of=methods_taking)
    try:
        create_method(method, **values)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where} method_args of {method!r}: {err}") from None
    return values


def _distill(values: Any, where: str) -> Optional[Dict[str, Any]]:
    if values is None:
        return None
    values = check_settings(values, distill_settings(), f"{where} distill")
    try:
        SelfDistillation(torch.nn.Identity(), **values)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where} distill: {err}") from None
    return values


def _items(path: Path) -> List[Any]:
    data = read_yaml(path)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} must be a non-empty YAML list")
    return data


def bench_file(name_or_path: str) -> Path:
    """A bench entries/grid file: a path, or the name of a bundled one in ``configs/bench`` (without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / "bench" / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in (CONFIG_DIR / "bench").glob("*.yaml"))
    raise FileNotFoundError(f"{brief(name_or_path)} is neither a file nor a bundled bench file; bundled: "
                            f"{', '.join(names)}")


def load_entries(path: Path = ENTRIES_PATH) -> List[BenchEntry]:
    """The bench entries of a YAML file (default: the bundled, tuned ones)."""
    entries = []
    for i, item in enumerate(_items(path)):
        where = f"{path} entry {i + 1}"
        _check_keys(item, BenchEntry, where)
        method = _check_method(item, where)
        entries.append(BenchEntry(item["label"], method, _args(item.get("method_args"), method, where),
                                  _distill(item.get("distill"), where), bool(item.get("ours", False)),
                                  _config(item.get("config"), where)))
    return entries


def load_grid(path: Path = GRID_PATH) -> List[TuneSpec]:
    """The tuning specs of a YAML file (default: the bundled grid)."""
    specs: List[TuneSpec] = []
    for i, item in enumerate(_items(path)):
        label = item.get("label") if isinstance(item, Mapping) else None
        shown = "?" if not isinstance(label, str) else label if len(label) <= 40 else label[:39] + "…"
        where = f"{path} spec {i + 1} ({shown})"
        _check_keys(item, TuneSpec, where)
        method = _check_method(item, where)
        candidates = []
        for j, candidate in enumerate(item.get("candidates") or []):
            candidate = dict(candidate or {})
            distill = candidate.pop("distill", None)
            candidates.append((_args(candidate, method, f"{where} candidate {j + 1}"),
                               _distill(distill, f"{where} candidate {j + 1}")))
        if not candidates:
            raise ValueError(f"{where} needs at least one candidate")
        inherit = item.get("inherit")
        if inherit is not None and inherit not in [s.label for s in specs]:
            raise ValueError(f"{where} inherits from {brief(inherit)}, which must be listed before it")
        specs.append(TuneSpec(item["label"], method, candidates, bool(item.get("ours", False)), inherit,
                              _args(item.get("fixed"), method, f"{where} fixed"), _config(item.get("config"), where)))
    return specs
