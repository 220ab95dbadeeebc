"""The training-method interface: ``loss = method(model, x, y)``, driven by any training loop.

A method takes a model that follows :mod:`multimix.contract` (``encode``,
``pool``, ``head``), an input batch x (m, ...) and labels y (integer (m,) or
soft (m, c)), and returns a 0-d loss to back-propagate. It is an
``nn.Module`` that owns everything about itself:

- its loss as terms (:meth:`Method.terms`: logits, soft targets and a weight
  per term) summed by one :class:`~multimix.methods.terms.Objective` whose
  criterion is pluggable (``criterion=``; soft cross-entropy by default);
- its state: an EMA teacher (``distill``) is a registered submodule, so
  ``state_dict()`` / ``load_state_dict()`` hold it, and whatever holds the
  method (a LightningModule) saves, restores, moves and casts it;
- its per-step hook: :meth:`Method.update` once per optimiser step, or
  :meth:`Method.attach` to have ``optimizer.step()`` call it;
- its needs (:meth:`Method.check_data`) and where it mixes (``mixes_at``:
  ``"none"``, ``"input"``, ``"hidden"`` or ``"embedding"``);
- one random generator (``generator``) for all its draws. Without one, the
  method makes its own on first use, seeded from ``torch.initial_seed()``,
  the process's rank and the step count, so that every process of a
  distributed job draws differently while a seeded run stays reproducible.

An integer label ``UNLABELLED`` (−1) marks an unlabelled example
(semi-supervised training): its target is the teacher's prediction, so such
batches need ``distill``; every method then mixes it like any other example,
or, with the teacher's ``consistency_weight`` > 0, applies its loss to the
labelled examples only and adds the teacher's consistency term on the others.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import distributed as D
from .. import functional as MF
from ..checks import brief, check_generator, check_int, check_label_smoothing, check_positive_int
from ..contract import check_mixable, num_classes_of
from .distill import SelfDistillation
from .settings import Setting, settings_of
from .terms import LossTerm, Objective

__all__ = ["Method", "ERM", "UNLABELLED", "unlabelled_rows"]

UNLABELLED = -1  # the integer label of an unlabelled example
HOST_STREAM = 0x686F7374  # a seed part that sets the host stream (Method.host_uniform) apart from other derived seeds


def unlabelled_rows(y) -> Optional[Tensor]:
    """The (m,) bool mask of the examples labelled ``UNLABELLED`` in integer labels y (m,); None when y is soft
    (m, c) or not a tensor, and, for y on the host (:func:`multimix.functional.on_host`), when no row is
    unlabelled. On an accelerator the mask is returned unread (it may be all False): reading it would
    synchronise host and device."""
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dim() != 1:
        return None
    unlabelled = y == UNLABELLED
    if MF.on_host(y) and not bool(unlabelled.any()):
        return None
    return unlabelled


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 of each in turn): distinct parts give unrelated streams."""
    state = 0
    for part in parts:
        state = (state + 0x9E3779B97F4A7C15 + (int(part) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state = z ^ (z >> 31)
    return state >> 1


class Method(nn.Module):
    """Base class of every training method.

    Args:
        num_classes: c; read from the model's ``nn.Linear`` head when omitted.
        label_smoothing: smoothing of the one-hot targets.
        distill: a :class:`SelfDistillation` whose EMA teacher blends soft
            targets into the hard ones; every method interpolates them exactly
            like hard targets.
        criterion: the per-row loss of logits against soft targets
            (:mod:`multimix.losses`; default soft cross-entropy).
        generator: torch generator for every random draw of the method.
    """

    mixes_at = "none"
    uses_dense_features = False  # True: the loss needs the dense features (m, d, *spatial), not pooled ones
    needs_positions = False  # True: only for inputs with positions (sequences, images), not for table rows
    free_on_resume: frozenset = frozenset()  # settings a resumed run may change (e.g. the mixing scope)
    predicts_unlabelled = False  # True: makes its own targets for unlabelled examples (no teacher needed)

    @classmethod
    def settings(cls) -> Dict[str, Setting]:
        """The user settings of this method (keyword arguments of its constructor chain), by name."""
        return settings_of(cls)

    def __init__(
        self,
        *,
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        distill: Optional[SelfDistillation] = None,
        criterion: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        if num_classes is not None:
            check_positive_int(num_classes, "num_classes")
        label_smoothing = check_label_smoothing(label_smoothing)
        if distill is not None and not isinstance(distill, SelfDistillation):
            raise TypeError(f"distill must be a multimix.SelfDistillation or None, got {type(distill).__name__}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.distill = distill
        self.objective = Objective(criterion)
        self.steps = 0  # optimiser steps taken (update() calls)
        self.host_draws = 0  # draws of host_uniform so far
        if generator is not None:
            self.generator = generator

    # ------------------------------------------------------------------ state

    @property
    def generator(self) -> Optional[torch.Generator]:
        """The one generator of every random draw of this method (None until the first draw without one)."""
        return self.__dict__.get("_generator")

    @generator.setter
    def generator(self, generator: Optional[torch.Generator]) -> None:
        check_generator(generator)
        self.__dict__["_generator"] = generator

    def draws(self, device) -> torch.Generator:
        """The generator for a draw on ``device``: ``generator``, made on first use when none was given
        (seeded from ``torch.initial_seed()``, the process's rank and :attr:`steps`)."""
        if self.generator is None:
            device = torch.device(device)
            generator = torch.Generator(device=device if device.type != "meta" else "cpu")
            generator.manual_seed(derived_seed(torch.initial_seed(), D.rank(), self.steps))
            self.generator = generator
        return self.generator

    def host_uniform(self, device) -> float:
        """A uniform draw in [0, 1) made on the host, for choices that steer the step's Python code (a layer,
        a coin).

        Reading back a draw of an accelerator's generator would synchronise host
        and device every step. This stream is counter-based instead: splitmix64
        of the seed of :meth:`draws` (``device``) and the count of these draws,
        kept in the method's state, so a resumed run continues it exactly.
        """
        seed = self.draws(device).initial_seed()  # kept on the host, even for a CUDA generator
        self.host_draws += 1
        return derived_seed(seed, HOST_STREAM, self.host_draws) / 2.0**63

    def get_extra_state(self) -> Dict[str, Any]:
        return {"steps": self.steps, "host_draws": self.host_draws}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or "steps" not in state:
            raise ValueError(f"a method's state must hold its step count ('steps'), got {brief(state)}")
        try:
            self.steps = check_int(state["steps"], "steps", 0)
            self.host_draws = check_int(state.get("host_draws", 0), "host_draws", 0)  # absent from older checkpoints
        except TypeError as err:
            raise ValueError(str(err)) from None

    def __repr__(self) -> str:
        skip = {"generator", "distill", "mix", "objective", "training", "steps", "host_draws"}
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in skip and v is not None}
        if self.distill is not None:
            fields["distill"] = self.distill
        if self.objective.criterion is not Objective().criterion:
            fields["criterion"] = self.objective.criterion
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    # ------------------------------------------------------------------ per step

    def update(self, model) -> None:
        """Once after each optimiser step: counts the step and advances the EMA teacher (if any)."""
        self.steps += 1
        if self.distill is not None:
            self.distill.update(model)

    def attach(self, optimizer: torch.optim.Optimizer, model) -> None:
        """Have every ``optimizer.step()`` call :meth:`update` (model) (a step post-hook), in any loop.

        One optimiser at a time: attaching again (another optimiser, or the same) replaces the previous hook.
        A step that an AMP ``GradScaler`` skips is no step, and updates nothing. Do not call :meth:`update`
        yourself as well.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.detach()
        handle = optimizer.register_step_post_hook(lambda *_: self.update(model))
        self.__dict__["_attached"] = (weakref.ref(optimizer), handle)

    def detach(self) -> None:
        """Remove the hook of :meth:`attach` (no-op when none)."""
        attached = self.__dict__.pop("_attached", None)
        if attached is not None:
            attached[1].remove()

    def attached_to(self, optimizer) -> bool:
        """Whether :meth:`attach` hooked this method to ``optimizer``."""
        attached = self.__dict__.get("_attached")
        return attached is not None and attached[0]() is optimizer

    # ------------------------------------------------------------------ needs

    def check_data(self, input_shape: Sequence[int], *, dataset: str = "the data") -> None:
        """``ValueError`` in one line when examples of ``input_shape`` (one example's shape) do not suit the
        method, e.g. a method that needs positions (CutMix, Dense MultiMix) on table rows."""
        if self.needs_positions and len(tuple(input_shape)) < 2:
            from . import METHODS  # the registry, for the hint

            fit = [name for name, cls in METHODS.items() if cls.needs_positions is not True]  # MixupE: its base
            name = next((name for name, cls in METHODS.items() if cls is type(self)), type(self).__name__)
            raise ValueError(f"method {name!r} needs inputs with positions (sequences, images); "
                             f"{dataset} examples have shape {tuple(input_shape)}. Methods for such data: "
                             f"{', '.join(fit)}")

    def check_steps(self, total_steps: int) -> None:
        """Warn when the teacher's warm-up is longer than a run of ``total_steps`` optimiser steps."""
        if self.distill is not None and self.distill.warmup_steps > total_steps:
            warnings.warn(f"the teacher's warm-up ({self.distill.warmup_steps} steps) is longer than the run "
                          f"({total_steps} optimiser steps): its targets never reach their full weight "
                          f"({self.distill.weight}); set warmup_steps <= {total_steps}", stacklevel=2)

    @property
    def global_mixing(self) -> bool:
        """Whether the method mixes across the processes of a distributed job (gathers their batches)."""
        return False

    def gathered_sizes(self, features: Tensor) -> Dict[str, Any]:
        """What :attr:`global_mixing` gathers per example, for dense features (m, d, *spatial) of the model:
        ``positions`` of the embedding (1: pooled) and whether the targets are per position (``dense_targets``)."""
        return {"positions": 1, "dense_targets": False}

    @property
    def unlabelled_fraction(self) -> float:
        """Share of a loop's unlabelled examples to draw into a step now: the teacher's warm-up (their targets
        are its predictions); 0 without a teacher."""
        return self.distill.warmup_fraction if self.distill is not None else 0.0

    # ------------------------------------------------------------------ the loss

    def targets(self, model, x: Tensor, y: Tensor, *, dense: bool = False) -> Tensor:
        """Soft targets: (m, c), or (m, c, *spatial) when ``dense`` and a teacher predicts per position."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one example, got shape {tuple(x.shape)}")
        check_mixable(model)
        num_classes = self.num_classes or num_classes_of(model)
        # without a teacher only a host read can tell (on an accelerator the one-hot scatter's assert refuses -1)
        unlabelled = unlabelled_rows(y) if self.distill is not None or MF.on_host(y) else None
        if unlabelled is not None:
            if self.distill is None:
                raise ValueError(f"y marks {int(unlabelled.sum())} examples unlabelled ({UNLABELLED}); their "
                                 "targets come from a teacher: pass distill=SelfDistillation(model)")
            y = y.masked_fill(unlabelled, 0)  # a placeholder class: the teacher's prediction replaces these rows
            unlabelled = unlabelled.to(x.device)
        hard = MF.as_soft_targets(y, num_classes, batch_size=x.shape[0], label_smoothing=self.label_smoothing)
        if y.is_floating_point() and not self.objective.multi_label:
            self.check_label_rows(hard)
        hard = hard.to(x.device)
        if self.distill is None:
            return hard
        if self.distill.separate_term:  # (m, 2c): hard and teacher parts apart, split into terms by terms_of
            return self.distill.stacked_targets(x, hard, dense=dense, unlabelled=unlabelled)
        return self.distill.targets(x, hard, dense=dense, unlabelled=unlabelled)

    def blend(self, targets: Tensor) -> Tensor:
        """The blended targets (m, c, ...) of :meth:`targets` (which are (m, 2c, ...) under ``separate_term``)."""
        if self.distill is None or not self.distill.separate_term:
            return targets
        c = targets.shape[1] // 2
        return targets[:, :c] + targets[:, c:]

    def terms_of(self, name: str, logits: Tensor, targets: Tensor, weight: float = 1.0,
                 row_weights: Optional[Tensor] = None, criterion: Optional[Callable] = None) -> List[LossTerm]:
        """``[LossTerm(name, logits (k, c), targets (k, c), weight, row_weights)]``; under the teacher's
        ``separate_term`` (targets (k, 2c)) two terms, ``name`` and ``"distill/" + name``: each part's rows
        normalised to sum to 1 and weighted by their mass (1 − w and w, and 0 / 1 for an unlabelled row)."""
        c = logits.shape[-1]
        if targets.shape[-1] != 2 * c or self.distill is None or not self.distill.separate_term:
            return [LossTerm(name, logits, targets, weight, row_weights, criterion=criterion)]
        out = []
        for prefix, part in (("", targets[:, :c]), ("distill/", targets[:, c:])):
            mass = part.detach().sum(dim=-1)  # (k,): the part's share of each row
            share = mass / mass.shape[0] if row_weights is None else mass * row_weights
            normalised = part / mass.clamp_min(torch.finfo(mass.dtype).tiny).unsqueeze(-1)
            out.append(LossTerm(prefix + name, logits, normalised, weight, row_weights=share, criterion=criterion))
        return out

    @staticmethod
    def check_label_rows(targets: Tensor) -> None:
        """``ValueError`` unless soft label rows (m, c, ...) are non-negative and sum to 1 over classes
        (:func:`multimix.functional.check_label_rows`), naming the multi-label criterion that takes other rows."""
        MF.check_label_rows(targets, hint="Multi-hot (multi-label) rows need a multi-label criterion: "
                                          "criterion=multimix.losses.bce_with_logits")

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        """The method's loss terms on x (m, ...) and y (m,) or (m, c); unlabelled rows get teacher targets."""
        raise NotImplementedError

    def loss_terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        """Every term of a batch: :meth:`terms`, or, when the teacher has a ``consistency_weight`` and y marks
        unlabelled rows, :meth:`terms` of the labelled rows and a ``"consistency"`` term on the others."""
        unlabelled = unlabelled_rows(y) if self.distill is not None and self.distill.consistency_weight else None
        if unlabelled is None:
            return self.terms(model, x, y)
        labelled = ~unlabelled
        consistency = LossTerm("consistency", value=self.distill.consistency(model, x[unlabelled.to(x.device)]))
        if not bool(labelled.any()):
            return [consistency]
        return [*self.terms(model, x[labelled.to(x.device)], y[labelled]), consistency]

    def reduce(self, terms: Sequence[LossTerm]) -> Tensor:
        """The 0-d loss of ``terms``: the objective's weighted sum."""
        return self.objective(terms)

    def forward(self, model, x: Tensor, y: Tensor) -> Tensor:
        """The training loss (0-d) of the batch x (m, ...) with labels y: :meth:`reduce` of :meth:`loss_terms`."""
        return self.reduce(self.loss_terms(model, x, y))

    def loss(self, model, x: Tensor, y: Tensor) -> Tensor:
        """The method's loss (0-d) of :meth:`terms` alone (no consistency term)."""
        return self.reduce(self.terms(model, x, y))


class ERM(Method):
    """Empirical risk minimisation: cross-entropy on the clean batch."""

    def terms(self, model, x: Tensor, y: Tensor) -> List[LossTerm]:
        targets = self.targets(model, x, y)
        return self.terms_of("clean", model(x), targets)
