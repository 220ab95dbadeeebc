"""Memory budgets: refuse, before any data is generated or any step is taken, a run that cannot fit in memory.

:func:`check_memory` estimates, from a :class:`TrainConfig` alone, the bytes
that generating the data set and one training step need, compares them with the
memory the machine has available (:func:`available_memory`) and raises
:class:`MemoryBudgetError` in one line that names the setting responsible, the
estimate and the memory available. ``memory_check=False`` (``--no-memory-check``)
turns the check off.

The estimates are rough by design; each part is documented where it is
computed. In float32 words (4 bytes), for a mini-batch of m examples of c
classes, n interpolation vectors over tuples of t examples drawn ``rows_per_draw``
= k rows at a time, and dense features with r positions:

- MultiMix's and Dense MultiMix's mixed terms in one pass (:mod:`multimix.fused`: on the CPU with the compiled
  kernels, k = 1 and tuples of the whole batch, assuming an affine head and the default criterion): Λ is never
  stored, so ``PARTIAL_FLOATS`` (the kernel's partial gradients, at most 4 MiB) plus the padded operand,
  whatever n. Measured at n = 2·10⁵: about 2 MiB above the model's own step (tests/test_budgets.py).
- Otherwise MultiMix's Λ: ``S·⌈n/k⌉·t + n·m``: the Dirichlet sampler's output and scratch
  (S = 1 on the CPU, whose sampler works block by block in place; S = 3 on
  other devices, where torch's gamma kernel holds the concentrations, the draws
  and the boost's uniforms), and Λ over the whole mini-batch (n × m) with the
  products' copies; plus ``4·n·c`` for the mixed targets, the mixed logits and
  their gradients. Measured on the CPU at n = 2·10⁵, m = 128, c = 10: 132 MiB
  above the model's own step, against 226 MiB estimated (tests/test_budgets.py
  keeps the estimate above the measurement and within 3× of it).
- Dense MultiMix adds ``6·n·r·c`` (the mixed targets and logits of every position,
  their log-softmax and gradients; the (n, m, r) weights are never built); r is
  taken as 1, its lower bound, since it depends on the network's downsampling.
- the model: P parameters (counted exactly on the ``meta`` device, where nothing
  is allocated) times 2 (weights and gradients) plus the optimiser's state per
  parameter (SGD with momentum 1, Adam 2) plus 1 for a self-distillation teacher.
- activations: ``4·m·w·s`` where w and s are the output channels and output
  positions of the network's first layer (a lower bound: deep networks keep
  more), plus the input batch twice (the batch and its augmented or mixed copy).
- data: generating MNIST-1D peaks at about 2 KiB per generated example (the
  ``mnist1d`` generator works in float64 with several copies per example; measured 1.5–2.0 KiB),
  with ``max(⌈(num_train + val_size)/0.8⌉, ⌈num_test/0.2⌉, 5000)`` examples generated.
  Data read from files is bounded by the files (see :mod:`multimix.data`).

The shapes come from the data-set family before anything is read (lower bounds
where the files decide, e.g. the classes of an ImageFolder tree).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .. import native
from ..data import dataset_family
from ..data.audio import HOP_LENGTH, N_MELS, NUM_SAMPLES
from ..data.tabular import ADULT_CATEGORICAL, ADULT_NUMERIC
from ..models import GRAPH_MODELS, create_for_data
from ..sampling import cpu_route
from .config import TrainConfig, resolve_device

__all__ = ["MemoryBudgetError", "Estimate", "available_memory", "format_bytes", "step_estimate", "data_estimate",
           "check_fits", "check_memory", "OVERRIDE_HINT"]

FLOAT = 4  # bytes of a float32 word
MNIST1D_BYTES_PER_GENERATED = 2048  # peak bytes per example while the mnist1d package generates (measured 1.5–2.0 KiB)
SAMPLER_COPIES = {"cpu": 1}  # (n/k × t) float32 buffers of the Dirichlet sampler by device type; others: 3
ACTIVATION_COPIES = 4  # first-layer outputs kept per example (output, normalised, activated, gradient)
OVERRIDE_HINT = "pass --no-memory-check (memory_check=False) to try anyway"
METHOD_NAMES = {"erm": "ERM", "mixup": "input mixup", "cutmix": "CutMix", "manifold_mixup": "manifold mixup",
                "mixupe": "MixupE", "multimix": "MultiMix", "dense_multimix": "Dense MultiMix"}


class MemoryBudgetError(ValueError):
    """A run would need more memory than the machine has available (a ``ValueError``: the user's input)."""


@dataclass(frozen=True)
class Estimate:
    """Bytes a piece of work needs, by cause (``"n=1000000"``, ``"width=4096"``, ...), and what the work is."""

    parts: Dict[str, float]
    work: str  # "one MultiMix step", "generating MNIST-1D (5000 examples)"

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def cause(self) -> str:
        """The setting whose part of the estimate is the largest."""
        return max(self.parts, key=self.parts.get)


def format_bytes(count: float) -> str:
    """``"34 GiB"``, ``"2.3 TiB"``, ``"512 MiB"``: a byte count in binary units, 2 significant digits or more."""
    if not math.isfinite(count) or count >= 2**63:
        return "more than 8 EiB"
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            value = count / size
            return f"{value:.2g} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{count:.0f} B"


# ------------------------------------------------------------------ what the machine has


def _cgroup_available() -> Optional[int]:
    """Bytes left under this process's cgroup memory limit (a container's), None without a limit."""
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # v1
        try:
            limit, used = Path(limit_file).read_text().strip(), Path(used_file).read_text().strip()
        except OSError:
            continue
        # "max" (v2) or a huge number (v1, about 2^63) means no limit
        if limit.isdigit() and used.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - int(used))
        return None
    return None


def _host_available() -> Optional[int]:
    """Bytes of host memory available: Linux's MemAvailable (and the cgroup's limit), else sysconf, else None."""
    found: Optional[int] = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            found = None
    limited = _cgroup_available()
    if limited is not None:
        found = limited if found is None else min(found, limited)
    return found


def available_memory(device) -> Optional[int]:
    """Bytes free for tensors on ``device``: free CUDA memory, or available host memory; None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    if device.type == "cpu":
        return _host_available()
    return None  # MPS and others: no portable query, no check


# ------------------------------------------------------------------ estimates


def _example_shape(config: TrainConfig) -> Tuple[Tuple[int, ...], int]:
    """(input shape, number of classes) of the config's data set, before reading it (lower bounds where unknown)."""
    family = dataset_family(config.dataset)
    if family == "mnist1d":
        return (1, 40), 10
    if family in ("cifar10", "cifar100"):
        return (3, 32, 32), 100 if family == "cifar100" else 10
    if family == "imagefolder":
        return (3, config.image_size, config.image_size), 2  # at least 2 classes
    if family == "fsdd":
        return (1, N_MELS, NUM_SAMPLES // HOP_LENGTH + 1), 10
    if family == "adult":
        return (len(ADULT_NUMERIC) + len(ADULT_CATEGORICAL),), 2  # before one-hot encoding: a lower bound
    return (), 2  # graphs: node indices


def _training_examples(config: TrainConfig) -> Optional[int]:
    """The training set's size where the config decides it (MNIST-1D, or a num_train subset), else None."""
    if config.num_train is not None:
        return config.num_train
    return 4000 if dataset_family(config.dataset) == "mnist1d" else None


def _model_size(name: str, input_shape, num_classes: int, width: Optional[int]) -> Tuple[float, float]:
    """(parameters, first-layer outputs per example) of model ``name``, built on the meta device (no allocation).

    ``(inf, inf)`` when the sizes overflow (a width beyond what any machine holds); ``(0, 0)`` when the model
    cannot be built here (its own checks report that later) or needs a graph (see :func:`step_estimate`).
    """
    try:
        with torch.device("meta"):
            model = create_for_data(name, num_classes=num_classes, input_shape=input_shape, width=width)
    except RuntimeError as err:
        if "overflow" in str(err).lower():
            return math.inf, math.inf
        return 0.0, 0.0
    except Exception:  # noqa: BLE001 - any other failure is reported by build_model with its own message
        return 0.0, 0.0
    params = float(sum(p.numel() for p in model.parameters()))
    positions = list(input_shape[1:])
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            strides = list(module.stride) + [1] * len(positions)
            out = math.prod(math.ceil(s / st) for s, st in zip(positions, strides))
            return params, float(module.out_channels * out)
        if isinstance(module, torch.nn.Linear):
            return params, float(module.out_features)
    return params, 0.0


def step_estimate(*, model: str, input_shape, num_classes: int, batch: int, width: Optional[int] = None,
                  method: str = "erm", method_args: Optional[Dict] = None, optimizer: str = "sgd",
                  momentum: float = 0.9, teacher: bool = False, device="cpu") -> Estimate:
    """Bytes one training step needs (see the module docstring for each part), by the setting responsible.

    ``input_shape`` is one example's shape (``()`` for graph nodes), ``batch`` the examples per step (m),
    ``device`` where the step runs (the Dirichlet sampler differs).
    """
    args = dict(method_args or {})
    m, c = max(1, int(batch)), max(1, int(num_classes))
    parts: Dict[str, float] = {}
    size_cause = f"width={width}" if width is not None else f"model {model}"
    if model in GRAPH_MODELS:  # built with the graph's features: count its hidden layer with 1 feature (a lower bound)
        hidden = 16 if width is None else width
        params, first = float(hidden * (1 + 1 + c) + c), float(hidden)
    else:
        params, first = _model_size(model, tuple(input_shape), c, width)
    states = (2 if optimizer == "adam" else (1 if momentum > 0 else 0)) + (1 if teacher else 0)
    parts[size_cause] = FLOAT * params * (2 + states)
    input_words = math.prod(input_shape) if input_shape else 1
    parts[f"batch_size={m}"] = FLOAT * m * (ACTIVATION_COPIES * first + 2 * input_words)
    if method in ("multimix", "dense_multimix"):
        n = int(args.get("n", 1000))
        t = min(int(args.get("tuple_size") or m), m)
        k = max(1, int(args.get("rows_per_draw", 1)))
        if torch.device(device).type == "cpu" and k == 1 and t == m and cpu_route() == "native":
            # the one pass (multimix.fused): Λ is never stored; partial gradients (at most PARTIAL_FLOATS) and the
            # operand (the examples' logits and targets at R ≤ 2 positions, padded)
            words = native.PARTIAL_FLOATS + 2 * m * 2 * native.padded_classes(c)
        else:
            sampler = SAMPLER_COPIES.get(torch.device(device).type, 3)
            words = sampler * math.ceil(n / k) * t + n * m + 4 * n * c
            if method == "dense_multimix":
                r = 1  # positions of the dense features: at least one
                words += 6 * n * r * c
        parts[f"n={n}"] = FLOAT * float(words)
    return Estimate(parts, f"one {METHOD_NAMES.get(method, method)} step")


def data_estimate(config: TrainConfig) -> Optional[Estimate]:
    """Bytes that making the config's data set needs, where the config decides its size (MNIST-1D), else None."""
    if dataset_family(config.dataset) != "mnist1d":
        return None
    train = (config.num_train or 4000) + config.val_size
    test = config.num_test or 1000
    generated = max(math.ceil(train / 0.8), math.ceil(test / 0.2), 5000)
    cause = f"num_train={config.num_train}" if train / 0.8 >= test / 0.2 else f"num_test={config.num_test}"
    return Estimate({cause: float(MNIST1D_BYTES_PER_GENERATED * generated)},
                    f"generating MNIST-1D ({generated} examples)")


# ------------------------------------------------------------------ the check


def check_fits(estimate: Estimate, device, hint: str = OVERRIDE_HINT) -> None:
    """Raise :class:`MemoryBudgetError` naming the cause, the estimate and the memory when ``estimate`` cannot fit."""
    device = torch.device(device)
    free = available_memory(device)
    if free is None or estimate.total <= free:
        return
    where = "this machine has" if device.type == "cpu" else f"{device} has"
    amount = format_bytes(estimate.total)
    amount = amount if amount.startswith("more than") else f"about {amount}"
    raise MemoryBudgetError(f"{estimate.cause} needs {amount} for {estimate.work}; "
                            f"{where} {format_bytes(free)} available ({hint})")


def at_once(estimate: Estimate, runs: int) -> Estimate:
    """``estimate`` for ``runs`` such pieces of work at the same time (a sweep's ``--jobs``)."""
    if runs == 1:
        return estimate
    return Estimate({k: v * runs for k, v in estimate.parts.items()}, f"{estimate.work}, × {runs} runs at once (--jobs)")


def check_memory(config: TrainConfig, device=None, runs_at_once: int = 1) -> None:
    """Refuse ``config`` (:class:`MemoryBudgetError`) when its data or one training step cannot fit in memory.

    Runs from the config alone, so it can come before any data is read. ``device`` is where the steps run (default:
    the config's); data is made in host memory. ``runs_at_once`` such runs share this machine's memory (a sweep's
    local workers; on CPU their steps too, on GPUs each its own device). Nothing is checked when
    ``config.memory_check`` is False.
    """
    if not config.memory_check:
        return
    device = resolve_device(config.device) if device is None else torch.device(device)
    data = data_estimate(config)
    if data is not None:
        check_fits(at_once(data, runs_at_once), "cpu")
    shape, classes = _example_shape(config)
    batch = config.batch_size or _training_examples(config) or 1
    step = step_estimate(model=config.model, input_shape=shape, num_classes=classes,
                         batch=batch + config.unlabelled_batch, width=config.width, method=config.method,
                         method_args=config.method_args, optimizer=config.optimizer, momentum=config.momentum,
                         teacher=config.distill is not None, device=device)
    check_fits(at_once(step, runs_at_once) if device.type == "cpu" else step, device)
