"""The run's configuration: :class:`TrainConfig`, typed and checked before any data loads, and YAML recipes.

Every field is declared once here with its type and default; the command
line's trainer flags and the YAML recipes derive from these declarations, and
a method's ``method_args`` / the ``distill`` mapping are checked against the
settings read from the method constructors (:mod:`multimix.methods.settings`).
A wrong key or type fails in :meth:`TrainConfig.validate`, naming the key, the
expected type and the valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, get_args

import torch

from ..checks import brief, check_type
from ..data import DATASETS, check_dataset_name
from ..methods import METHODS, SelfDistillation, create_method, distill_settings, method_settings, methods_taking
from ..methods.settings import check_settings
from ..models import DEFAULT_MODELS, check_model_name, default_model_for

__all__ = ["TrainConfig", "resolve_device", "SCHEDULES", "CONFIG_DIR", "bundled_configs", "load_recipe"]

Schedule = Literal["cosine", "step", "constant"]
SCHEDULES = get_args(Schedule)
Optimizer = Literal["sgd", "adam"]
Selection = Literal["last", "best_val"]
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MAX_TEXT_CHARS = 4096  # longest text setting (a path, a name): PATH_MAX on Linux
MAX_SEED = 2**32 - 1  # numpy's and most libraries' seed range
MAX_WORKERS = 1024  # data-loader processes
MAX_TIMEOUT_S = 1e9  # seconds (~31 years): beyond it datetime.timedelta overflows
# YAML recipes and bench files are untrusted input (the bundled ones are under 10 KiB, 4 levels deep).
MAX_YAML_BYTES = 1 << 20  # 1 MiB on disk
MAX_YAML_DEPTH = 32  # levels of mappings and lists, aliases expanded
MAX_YAML_NODES = 100_000  # values, aliases expanded (a "billion laughs" file of 1 KiB stands for 10^9)
MAX_YAML_CHARS = 4 << 20  # characters of text, aliases expanded


def _field(default: Any, group: str, help: str) -> Any:
    """A config field with its command-line group and help (``default`` may be a factory for lists and dicts)."""
    metadata = {"group": group, "help": help}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` in the output directory."""

    # data
    dataset: str = _field("mnist1d", "data", f"one of {', '.join(DATASETS)}")
    data_dir: Optional[str] = _field(None, "data", "data root (ImageFolder tree with train/ and test/, CIFAR root, the "
                                                   "Adult CSVs, FSDD recordings, or DIR with Cora/raw/ind.cora.*)")
    download: bool = _field(False, "data", "download the data set (CIFAR, Adult, FSDD, Planetoid) if it is not there")
    num_train: Optional[int] = _field(None, "data", "training subset size (default: all, 4000 for MNIST-1D)")
    num_test: Optional[int] = _field(None, "data", "test subset size")
    val_size: int = _field(0, "data", "examples held out from train for validation")
    image_size: int = _field(32, "data", "side of the (square) input images")
    augment: bool = _field(True, "data", "random crop and flip for image training data")
    # model and method
    model: Optional[str] = _field(None, "model and method",
                                  "cnn1d, preact_resnet18, preact_resnet_small, mlp, speech_cnn, gcn (graphs), "
                                  "resnet18..resnet152, timm:<name>; default (none given): the data family's, "
                                  + ", ".join(f"{model} for {family}" for family, model in DEFAULT_MODELS.items()))
    width: Optional[int] = _field(None, "model and method", "channels of cnn1d / first-group width of PreActResNets / width "
                                                         "of mlp and speech_cnn / hidden units of gcn")
    method: str = _field("erm", "model and method", f"one of {', '.join(METHODS)}")
    method_args: Dict[str, Any] = _field(dict, "model and method", "the method's settings (see the method flags)")
    distill: Optional[Dict[str, Any]] = _field(None, "model and method",
                                               "SelfDistillation's settings; None: no self-distillation")
    unlabelled_batch: int = _field(0, "model and method",
                                   "unlabelled examples drawn into every step (semi-supervised; their targets are the "
                                   "teacher's predictions, so it needs distill, mixed by the method, or fitted by "
                                   "the teacher's consistency loss when distill sets consistency_weight; their number "
                                   "ramps up over the teacher's warm-up); 0: none. Data sets with unlabelled inputs: "
                                   "planetoid")
    # optimisation (SGD with momentum, as in the papers; Adam for the GCN of Kipf & Welling)
    epochs: int = _field(20, "optimisation", "epochs of the schedule")
    batch_size: Optional[int] = _field(128, "optimisation", "examples per step and process (global batch: × processes); "
                                                           "null in a recipe: the whole training set (full-batch)")
    optimizer: Optimizer = _field("sgd", "optimisation", "sgd (with momentum) or adam")
    lr: float = _field(0.1, "optimisation", "peak learning rate")
    momentum: float = _field(0.9, "optimisation", "SGD momentum")
    nesterov: bool = _field(True, "optimisation", "Nesterov momentum")
    weight_decay: float = _field(5e-4, "optimisation", "L2 weight decay (coupled, also with adam)")
    schedule: Schedule = _field("cosine", "optimisation", "learning-rate schedule")
    milestones: List[float] = _field(lambda: [0.5, 0.75], "optimisation", "fractions of the run where 'step' decays")
    gamma: float = _field(0.1, "optimisation", "decay factor of the 'step' schedule")
    # machinery
    seed: int = _field(0, "machinery", "fixes the initial weights, the data order and the method's draws")
    device: str = _field("auto", "machinery", "auto, cpu, cuda, cuda:1, ...")
    amp: bool = _field(True, "machinery", "bfloat16 autocast (CUDA only)")
    compile: bool = _field(False, "machinery", "torch.compile the model")
    workers: int = _field(0, "machinery", "data-loader worker processes")
    out_dir: str = _field("runs/train", "machinery", "where checkpoints, metrics and the summary go")
    resume: bool = _field(False, "machinery", "continue from OUT_DIR/last.pt")
    stop_after_epochs: Optional[int] = _field(None, "machinery", "end this invocation after this many epochs (the "
                                              "schedule still spans --epochs); continue with --resume")
    checkpoint: bool = _field(True, "machinery", "write last.pt, metrics and the summary to OUT_DIR")
    progress: bool = _field(True, "machinery", "progress bar and per-epoch lines")
    eval_every: int = _field(1, "machinery", "evaluate every this many epochs (and after the last)")
    select: Selection = _field("last", "machinery", "the run's result: the last epoch's weights, or best_val: those "
                                                    "of the evaluated epoch with the best validation accuracy (ties: "
                                                    "lower validation loss); needs a validation split")
    memory_check: bool = _field(True, "machinery", "refuse, before any work, a run whose data or training step "
                                "needs more memory than the machine has available (an estimate; see "
                                "multimix.engine.budget)")
    dist_timeout: float = _field(600.0, "several processes",
                                 "seconds a process waits for the others before the job fails")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """A checked config from a mapping (a YAML recipe, ``config.json``); unknown keys name the valid ones."""
        if not isinstance(data, Mapping):
            raise TypeError(f"{source} must be a mapping of TrainConfig fields, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"{source} has unknown keys {brief(unknown)}; valid keys: {', '.join(valid)}")
        return cls(**data).validate(source)

    def validate(self, source: str = "") -> "TrainConfig":
        """Check every field's type and value, and the method's and distillation's settings; returns self.

        The one place a config is resolved: an unset ``model`` becomes the data family's default
        (:func:`multimix.models.default_model_for`), so that ``to_dict()``, checkpoints, summaries and sweep ids
        hold the model's name. Afterwards :attr:`validated` is True until a field changes, and the code below the
        boundary trusts the config (:meth:`ensure_validated`).
        """
        prefix = f"{source}: " if source else ""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_type(getattr(self, f.name), hints[f.name], f"{prefix}{f.name}")
            if isinstance(getattr(self, f.name), str) and len(getattr(self, f.name)) > MAX_TEXT_CHARS:
                raise ValueError(f"{prefix}{f.name} must be at most {MAX_TEXT_CHARS} characters, got "
                                 f"{len(getattr(self, f.name))}: {brief(getattr(self, f.name))}")
        try:
            check_dataset_name(self.dataset)
        except ValueError as err:
            raise ValueError(f"{prefix}{err}") from None
        if self.method not in METHODS:
            raise ValueError(f"{prefix}unknown method {brief(self.method)}; valid methods: {', '.join(METHODS)}")
        if self.model is None:
            self.model = default_model_for(self.dataset)
        check_model_name(self.model)
        resolve_device(self.device)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{prefix}unknown schedule {brief(self.schedule)}; valid schedules: "
                             f"{', '.join(SCHEDULES)}")
        for name in ("epochs", "eval_every", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{prefix}{name} must be >= 1, got {brief(getattr(self, name))}")
        for name in ("num_train", "num_test", "width", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{prefix}{name} must be >= 1 (or left unset), got {brief(getattr(self, name))}")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 0:
            raise ValueError(f"{prefix}stop_after_epochs must be >= 0 (0: only load or set up), got {self.stop_after_epochs}")
        for name in ("val_size", "workers", "seed", "unlabelled_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{prefix}{name} must be >= 0, got {brief(getattr(self, name))}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{prefix}lr must be a finite number > 0, got {self.lr}")
        for name in ("momentum", "weight_decay", "gamma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{prefix}{name} must be a finite number >= 0, got {brief(getattr(self, name))}")
        if not (math.isfinite(self.dist_timeout) and 0 < self.dist_timeout <= MAX_TIMEOUT_S):
            raise ValueError(f"{prefix}dist_timeout must be > 0 and <= {MAX_TIMEOUT_S:g} seconds, got "
                             f"{brief(self.dist_timeout)}")
        if self.seed > MAX_SEED:
            raise ValueError(f"{prefix}seed must be an integer in [0, {MAX_SEED}], got {brief(self.seed)}")
        if self.workers > MAX_WORKERS:
            raise ValueError(f"{prefix}workers must be at most {MAX_WORKERS}, got {brief(self.workers)}")
        for i, fraction in enumerate(self.milestones):
            if not (math.isfinite(fraction) and 0 <= fraction <= 1):
                raise ValueError(f"{prefix}milestones[{i}] must be a fraction of the run in [0, 1], got "
                                 f"{brief(fraction)}")
        check_settings(self.method_args, method_settings(self.method), f"{prefix}method_args of {self.method!r}",
                       owner_of=methods_taking)
        if self.distill is not None:
            check_settings(self.distill, distill_settings(), f"{prefix}distill")
        self.check_setting_values(prefix)
        if self.unlabelled_batch and self.distill is None and not METHODS[self.method].predicts_unlabelled:
            raise ValueError(f"{prefix}unlabelled_batch ({self.unlabelled_batch}) needs distill: the targets of "
                             "unlabelled examples are the teacher's predictions (--distill)")
        self.__dict__["_validated_as"] = self.to_dict()  # what validated compares against
        return self

    @property
    def validated(self) -> bool:
        """Whether :meth:`validate` passed on exactly the current values (False for a config changed since, or
        for a copy made with ``dataclasses.replace``)."""
        return self.__dict__.get("_validated_as") == self.to_dict()

    def ensure_validated(self) -> "TrainConfig":
        """self, after :meth:`validate` unless it is :attr:`validated` already: what the code below the command
        line calls, so that a run's config is validated once, and a library user's unchecked one still is."""
        return self if self.validated else self.validate()

    def check_setting_values(self, prefix: str = "") -> None:
        """The method's and the teacher's own checks of their values (alpha > 0, n >= 1, momentum in [0, 1) ...):
        their constructors, run here on a stand-in so that a bad value fails before any data loads."""
        try:
            create_method(self.method, **self.method_args)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{prefix}method_args of {self.method!r}: {err}") from None
        if self.distill is not None:
            try:
                SelfDistillation(torch.nn.Identity(), **self.distill)
            except (ValueError, TypeError) as err:
                raise type(err)(f"{prefix}distill: {err}") from None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device string; a clear error for the others."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {brief(name)}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {brief(name)}: CUDA is not available on this machine; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {brief(name)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def bundled_configs() -> List[str]:
    """Names of the YAML recipes shipped with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _yaml_children(node) -> List[Any]:
    """The nodes directly inside a composed YAML node (keys and values of a mapping, items of a sequence)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root, path: Path) -> None:
    """``ValueError`` when the YAML node graph ``root``, its aliases expanded, is recursive, deeper than
    :data:`MAX_YAML_DEPTH`, or holds more than :data:`MAX_YAML_NODES` values or :data:`MAX_YAML_CHARS` characters.

    Aliases share nodes, so a small file can stand for an enormous document (a "billion laughs" file): the sizes
    are counted per distinct node (memoised, iteratively), never by expanding.
    """
    sizes: Dict[int, Tuple[int, int, int]] = {}  # id(node) -> (values, characters, depth) once expanded
    open_nodes = set()  # the path from the root to the node being expanded
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if finished:
            open_nodes.discard(key)
            inner = [sizes[id(child)] for child in children]
            values = 1 + sum(v for v, _, _ in inner)
            chars = (len(node.value) if isinstance(node.value, str) else 0) + sum(c for _, c, _ in inner)
            depth = 1 + max((d for _, _, d in inner), default=0)
            sizes[key] = (values, chars, depth)
            line = f" (at line {node.start_mark.line + 1})"
            if depth > MAX_YAML_DEPTH:
                raise ValueError(f"config {path} nests deeper than {MAX_YAML_DEPTH} levels{line}, its aliases expanded")
            if values > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                raise ValueError(f"config {path} expands to more than {MAX_YAML_NODES} values or {MAX_YAML_CHARS} "
                                 f"characters{line} through its aliases (*name); a recipe is a few lines")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ValueError(f"config {path} has a recursive alias (at line {node.start_mark.line + 1})")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def read_yaml(path: Path) -> Any:
    """A YAML file's content, read as untrusted input.

    ``ValueError`` naming the file for a syntax error, a non-UTF-8 file, a file over :data:`MAX_YAML_BYTES`, and a
    document that nests deeper than :data:`MAX_YAML_DEPTH` or whose aliases expand it past :data:`MAX_YAML_NODES`
    values (see :func:`_check_expanded_size`). Only plain YAML types are built (``yaml.SafeLoader``).
    """
    try:
        import yaml
    except ImportError as err:
        raise ImportError("YAML configs need PyYAML: pip install pyyaml") from err

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader that stops composing past :data:`MAX_YAML_DEPTH` levels (before Python's recursion limit)."""

        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    mark = self.peek_event().start_mark
                    raise ValueError(f"config {path} nests deeper than {MAX_YAML_DEPTH} levels "
                                     f"(at line {mark.line + 1})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    with open(path, "rb") as f:
        raw = f.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise ValueError(f"config {path} is larger than {MAX_YAML_BYTES >> 20} MiB; a recipe is a few lines")
    try:
        loader = BoundedLoader(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"config {path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, Path(path))
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or err
        raise ValueError(f"config {path} is not valid YAML{line}: {brief(str(problem), 200)}") from err
    except (OverflowError, ValueError) as err:  # e.g. an integer of more digits than Python converts
        if str(err).startswith(f"config {path}"):
            raise
        raise ValueError(f"config {path} holds a value that cannot be read: {brief(str(err), 200)}") from err
    finally:
        loader.dispose()


def recipe_path(name_or_path: str) -> Path:
    """A recipe's file: ``name_or_path`` itself, or the bundled recipe of that name."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {brief(name_or_path)} is neither a file nor a bundled recipe; "
                                f"bundled: {', '.join(bundled_configs())}")
    return path


def load_recipe(name_or_path: str) -> Dict[str, Any]:
    """A YAML recipe (bundled name, see ``multimix configs``, or path) as a checked mapping of TrainConfig fields.

    Unknown keys, values of the wrong type and method settings the method does
    not take fail here, before any data is loaded.
    """
    path = recipe_path(name_or_path)
    data = read_yaml(path) or {}
    TrainConfig.from_dict(data, source=f"config {path}")
    return dict(data)
