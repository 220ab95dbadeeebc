"""Self-distillation targets from an exponential-moving-average teacher (MultiMix §3.3)."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as MF
from ..checks import check_int, check_number
from ..contract import dense_positions, eval_mode

__all__ = ["SelfDistillation", "legacy_teacher_state"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class SelfDistillation(nn.Module):
    """An EMA copy of the network predicts soft targets that are blended with hard ones.

    A module: the teacher is a registered submodule, so ``state_dict()`` holds its
    weights (under ``teacher.``) and the update count (extra state), and moving or
    casting the module that holds it (``.to(device)``, ``.double()``, a Lightning
    precision plugin) moves and casts the teacher with the student. The teacher
    predicts in eval mode whatever mode the module is in.

    targets = (1 − ``weight``) · Y + ``weight`` · softmax(teacher logits / T),
    per example (m, c), or per position (m, c, *spatial) for dense methods, where
    the teacher's head is applied at every position of its dense features.
    Methods interpolate these exactly like hard targets.

    The teacher is updated after each optimiser step with
    θ_t ← μ θ_t + (1 − μ) θ_s on parameters and floating-point buffers
    (batch-norm statistics); integer buffers are copied. It predicts in eval mode
    without gradients.

    A teacher that starts from the random initialisation predicts near-uniform
    targets, and blending those in from the first step traps the student in
    unconfident predictions (on MNIST-1D with a 1-D CNN: 80–87% instead of 97%
    test accuracy). ``warmup_steps`` ramps the blend linearly from 0 to
    ``weight`` over the first updates.

    Unlabelled examples (semi-supervised training, label ``UNLABELLED``) take
    the teacher's prediction as their target. By default a method mixes them
    with the labelled ones under its cross-entropy. With
    ``consistency_weight`` γ > 0 they instead get the consistency loss of Mean
    Teacher (Tarvainen & Valpola, 2017) and GraphMix (Verma et al., 2021):
    γ · ramp · mean((softmax(student logits) − teacher targets)²) over their
    (m_u, c) entries (:meth:`consistency`), beside the method's loss on the
    labelled examples. The squared error is bounded, so sharp (T < 1) or wrong
    teacher targets weigh less than under cross-entropy.

    Args:
        model: the student (a model following :mod:`multimix.contract`); it is deep-copied.
        momentum: μ in [0, 1).
        temperature: T > 0 of the teacher's softmax (T < 1 sharpens, as GraphMix's T = 0.1).
        weight: blend in [0, 1] between hard (0) and teacher (1) targets.
        warmup_steps: updates over which the blend (and the consistency weight) ramps up from 0.
        consistency_weight: γ >= 0 of the consistency loss on unlabelled examples; 0: they join the method's
            mixed cross-entropy instead (GraphMix uses γ = 10 on Cora with this mean over m_u · c entries).
        separate_term: give the teacher's targets loss terms of their own (``"distill/<term>"``, weighing w, beside
            the hard targets' terms weighing 1 − w) instead of blending them into one target; the same under
            soft cross-entropy and any loss linear in its targets, different under others (focal, smoothing).

    The defaults (μ = 0.99, T = 2, weight 0.2, 200 warm-up steps) are the best
    of five candidates for MultiMix on MNIST-1D's validation split
    (docs/results.md); a weight of 0.5 lost about 0.7 points there.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.99, temperature: float = 2.0, weight: float = 0.2,
                 warmup_steps: int = 200, consistency_weight: float = 0.0, separate_term: bool = False):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        MF.check_alpha(temperature, "temperature")
        if not (isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0):
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.consistency_weight = check_number(consistency_weight, "consistency_weight", minimum=0.0)
        if not isinstance(separate_term, bool):
            raise TypeError(f"separate_term must be True or False, got {type(separate_term).__name__}")
        self.separate_term = separate_term
        self.warmup_steps = warmup_steps
        self.updates = 0
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.teacher = copy.deepcopy(_unwrap(model))  # in the student's mode; predicts in eval mode
        self.teacher.requires_grad_(False)

    def __repr__(self) -> str:
        consistency = f", consistency_weight={self.consistency_weight}" if self.consistency_weight else ""
        consistency += ", separate_term=True" if self.separate_term else ""
        return (f"SelfDistillation(momentum={self.momentum}, temperature={self.temperature}, weight={self.weight}, "
                f"warmup_steps={self.warmup_steps}{consistency})")

    @property
    def warmup_fraction(self) -> float:
        """How far the warm-up is: min(1, updates / warmup_steps) (1 without warm-up)."""
        return 1.0 if self.warmup_steps == 0 else min(1.0, self.updates / self.warmup_steps)

    @property
    def current_weight(self) -> float:
        """The blend used now: ``weight`` · :attr:`warmup_fraction`."""
        return self.weight * self.warmup_fraction

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_t ← μ θ_t + (1 − μ) θ_s for parameters and floating buffers; copy the others.

        Non-persistent buffers (constants such as a graph model's node features) are left as they are.
        """
        self.updates += 1
        student = _unwrap(model).state_dict(keep_vars=True)
        for name, t in self.teacher.state_dict(keep_vars=True).items():
            s = student[name].detach()
            if t.is_floating_point():
                t.lerp_(s.to(t.dtype), 1.0 - self.momentum)
            else:
                t.copy_(s)

    @torch.no_grad()
    def predict(self, x: Tensor, *, dense: bool = False) -> Tensor:
        """Teacher's soft predictions: (m, c), or (m, c, *spatial) when ``dense``."""
        with eval_mode(self.teacher):
            return self._predict(x, dense=dense)

    def _predict(self, x: Tensor, *, dense: bool) -> Tensor:
        teacher = self.teacher
        features = teacher.encode(x)
        if dense and features.dim() > 2:
            positions = dense_positions(teacher, features)  # (m, d, r)
            logits = MF.apply_per_position(teacher.head, positions)
            if positions.shape[2] == features.shape[2:].numel():
                logits = logits.view(features.shape[0], -1, *features.shape[2:])
            return torch.softmax(logits.float() / self.temperature, dim=1)
        logits = teacher.head(teacher.pool(features))
        return torch.softmax(logits.float() / self.temperature, dim=1)

    def targets(self, x: Tensor, hard: Tensor, *, dense: bool = False, unlabelled: Optional[Tensor] = None) -> Tensor:
        """Blend hard targets (m, c) with the teacher's: (m, c) or (m, c, *spatial).

        ``unlabelled`` (m,) bool marks rows without a label: their target is the teacher's prediction alone
        (weight 1, also during the warm-up; the trainer ramps how many such rows join a batch instead).
        """
        weight = self.current_weight
        if weight == 0.0 and unlabelled is None:
            return hard
        soft = self.predict(x, dense=dense)
        if soft.shape[1] != hard.shape[1]:
            raise ValueError(f"teacher predicts {soft.shape[1]} classes but the targets have {hard.shape[1]}")
        hard = hard.view(*hard.shape, *([1] * (soft.dim() - 2)))
        blended = (1.0 - weight) * hard + weight * soft
        if unlabelled is None:
            return blended
        return torch.where(unlabelled.view(-1, *([1] * (soft.dim() - 1))), soft, blended)

    def stacked_targets(self, x: Tensor, hard: Tensor, *, dense: bool = False,
                        unlabelled: Optional[Tensor] = None) -> Tensor:
        """The two parts of :meth:`targets` side by side along the classes, each with its row's weight:
        [(1 − w_i) Y_i, w_i softmax(teacher_i / T)], (m, 2c) or (m, 2c, *spatial), w_i the blend (1 for an
        unlabelled row). Every method mixes targets linearly, so the mixed parts stay apart (``separate_term``)."""
        weight = self.current_weight
        if weight == 0.0 and unlabelled is None:
            return torch.cat([hard, torch.zeros_like(hard)], dim=1)  # no teacher yet: no forward pass
        soft = self.predict(x, dense=dense)
        if soft.shape[1] != hard.shape[1]:
            raise ValueError(f"teacher predicts {soft.shape[1]} classes but the targets have {hard.shape[1]}")
        rows = [1] * (soft.dim() - 1)
        hard = hard.view(*hard.shape, *([1] * (soft.dim() - 2))).expand_as(soft)
        w = torch.full((soft.shape[0], *rows), weight, device=soft.device, dtype=soft.dtype)
        if unlabelled is not None:
            w = torch.where(unlabelled.view(-1, *rows), torch.ones_like(w), w)
        return torch.cat([(1.0 - w) * hard, w * soft], dim=1)

    def consistency(self, model: nn.Module, x: Tensor) -> Tensor:
        """γ · ramp · mean((softmax(model(x)) − teacher targets)²): a 0-d loss over unlabelled inputs x (m_u, ...).

        The ramp is :attr:`warmup_fraction`; gradients reach the student only. Zero (and no forward pass)
        while γ · ramp is 0.
        """
        weight = self.consistency_weight * self.warmup_fraction
        if weight == 0.0 or x.shape[0] == 0:
            return x.new_zeros((), dtype=torch.float32)
        student = torch.softmax(model(x).float(), dim=1)
        return weight * F.mse_loss(student, self.predict(x))

    def get_extra_state(self) -> Dict[str, Any]:
        return {"updates": self.updates}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or "updates" not in state:
            raise ValueError("the EMA teacher's state must hold its update count ('updates')")
        try:
            self.updates = check_int(state["updates"], "updates", 0)
        except TypeError as err:
            raise ValueError(str(err)) from None

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load a state of :meth:`state_dict`, or of multimix <= 0.1 (``{"teacher": ..., "updates": n}``)."""
        return super().load_state_dict(legacy_teacher_state(state_dict), strict=strict, assign=assign)


def legacy_teacher_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A :class:`SelfDistillation` state dict from ``state``, which may be of multimix <= 0.1's format
    ``{"teacher": teacher.state_dict(), "updates": n}`` (returned as it is otherwise)."""
    old = isinstance(state, Mapping) and isinstance(state.get("teacher"), Mapping)
    if old and set(state) <= {"teacher", "updates"}:
        out = {f"teacher.{k}": v for k, v in state["teacher"].items()}
        out["_extra_state"] = {"updates": state.get("updates", 0)}
        return out
    return state


# The defaults as a mapping (what ``--distill`` uses), read from the signature so they are stated once.
SelfDistillation.DEFAULTS = {name: p.default for name, p in inspect.signature(SelfDistillation.__init__).parameters.items()
                             if p.default is not inspect.Parameter.empty}
