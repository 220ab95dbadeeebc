"""White-box L∞ adversarial attacks (FGSM, PGD) and the error of a classifier under attack.

Attacks work in *pixel space*: the space the inputs ``x`` live in and in which
``eps`` is measured ([0, 1] for images). When the model expects normalised
inputs, pass ``normalize`` (e.g. :class:`Normalize` built from the data set's
mean/std): the model is then evaluated on ``normalize(x)``, the gradient flows
back through the normalisation, and the perturbation stays ``eps`` in pixel
space. ``clamp=(lo, hi)`` keeps adversarial inputs valid ([0, 1] images);
``clamp=None`` disables it (MNIST-1D, which is standardised, not in [0, 1]).

The attacks differentiate with :func:`torch.autograd.grad` with respect to the
input only, so no ``.grad`` is left on the model's parameters; they never call
``model.train()``/``model.eval()`` (put the model in eval mode first: in train
mode batch-norm statistics would be used and updated by the attack's forward
passes); they work under an outer ``torch.no_grad()`` (not under
``torch.inference_mode()``); and they draw random numbers only from the
``generator`` they are given.

Shapes: a batch x of m examples, (m, *input_shape); labels y, (m,) int64.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import brief, check_generator, check_non_negative, check_positive, check_positive_int

__all__ = ["Normalize", "fgsm", "pgd", "error_under_attack"]

Clamp = Optional[Tuple[float, float]]


class Normalize(nn.Module):
    """Per-channel normalisation x ↦ (x − mean) / std for (m, C, *spatial) or (m, C) tensors.

    ``mean`` and ``std`` are stored as (C,) float64 CPU buffers (exact for
    float64 inputs) and cast to the input's device and dtype on every call, so
    one instance works for inputs anywhere without ``.to()``. A single value (a number or a
    length-1 sequence) applies to every channel.

    Args:
        mean: per-channel mean, a number or a sequence/1-D tensor of length C.
        std: per-channel standard deviation, same length as ``mean``
            (or length 1), every entry finite and > 0.
    """

    def __init__(self, mean: Union[float, Sequence[float], Tensor], std: Union[float, Sequence[float], Tensor]):
        super().__init__()
        mean_t = self._as_vector(mean, "mean")
        std_t = self._as_vector(std, "std")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be > 0 in every channel, got {std_t.tolist()}")
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise ValueError(f"mean and std must have the same length (one value per channel), "
                             f"got {mean_t.numel()} and {std_t.numel()}")
        mean_t, std_t = torch.broadcast_tensors(mean_t, std_t)
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())

    @staticmethod
    def _as_vector(value, name: str) -> Tensor:
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a number or a sequence of numbers, got {brief(value)}")
        try:
            t = torch.as_tensor(value, dtype=torch.float64, device="cpu").detach()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a number or a sequence of numbers, got {brief(value)}") from err
        if t.dim() > 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a number or a non-empty 1-D sequence (one value per channel), "
                             f"got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got {t.tolist()}")
        return t.reshape(-1)

    def _view(self, buf: Tensor, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (m, C, *spatial), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        c = buf.numel()
        if c != 1 and x.shape[1] != c:
            raise ValueError(f"x must have C = {c} channels (dim 1) to match mean/std, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return buf.to(device=x.device, dtype=dtype).view(1, c, *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor) -> Tensor:
        """Pixel (m, C, ...) → normalised (m, C, ...)."""
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

    def inverse(self, x: Tensor) -> Tensor:
        """Normalised (m, C, ...) → pixel (m, C, ...): x·std + mean."""
        return x * self._view(self.std, x) + self._view(self.mean, x)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


# ---------------------------------------------------------------------------
# argument checks (raise before any work is done; scalar checks come from multimix.checks)
# ---------------------------------------------------------------------------


def _check_clamp(clamp) -> Clamp:
    if clamp is None:
        return None
    if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
        raise ValueError(f"clamp must be None or a pair (lo, hi), got {brief(clamp)}")
    lo, hi = clamp
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ValueError(f"clamp must be None or a pair of numbers (lo, hi), got {brief(clamp)}")
    if not lo < hi:
        raise ValueError(f"clamp must satisfy lo < hi, got {brief(clamp)}")
    return float(lo), float(hi)


def _check_inputs(model, x, y, clamp: Clamp, normalize) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module mapping x to logits), got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (m, ...), got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (m, ...) with m >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (pixel space), got dtype {x.dtype}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices (m,), got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor of class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},) (one label per example of x), got {tuple(y.shape)}")
    if bool((y < 0).any()):
        raise ValueError("y must hold class indices >= 0")
    if normalize is not None and not callable(normalize):
        raise TypeError(f"normalize must be None or a callable (e.g. Normalize(mean, std)), got {type(normalize).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    if clamp is not None:
        lo, hi = clamp
        tol = 1e-6 * max(1.0, abs(lo), abs(hi))
        x_min, x_max = float(x.min()), float(x.max())
        if x_min < lo - tol or x_max > hi + tol:
            raise ValueError(f"x must lie in the clamp range {clamp} (pixel space), got values in [{x_min:.4g}, "
                             f"{x_max:.4g}]; pass normalize=... for normalised models, or clamp=None for inputs "
                             "that are not bounded (e.g. standardised MNIST-1D)")


def _input_gradient(model, x_adv: Tensor, y: Tensor, normalize) -> Tensor:
    """∇_x Σ_i CE(model(normalize(x))_i, y_i) at ``x_adv``, without touching parameter .grad."""
    with torch.enable_grad():
        x_req = x_adv.detach().requires_grad_(True)
        logits = model(normalize(x_req) if normalize is not None else x_req)
        # summed (not averaged) so that the gradient of each example is not scaled by 1/m,
        # which could underflow in low precision; only its sign is used
        loss = F.cross_entropy(logits.float(), y.to(logits.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_req)
    return grad


def _bounds(x: Tensor, eps: float, clamp: Clamp) -> Tuple[Tensor, Tensor]:
    """Element-wise box [lower, upper] = the eps-ball around x intersected with the clamp range."""
    lower, upper = x - eps, x + eps
    if clamp is not None:
        lower, upper = lower.clamp_min(clamp[0]), upper.clamp_max(clamp[1])
    return lower, upper


# ---------------------------------------------------------------------------
# attacks
# ---------------------------------------------------------------------------


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    normalize: Optional[Callable[[Tensor], Tensor]] = None,
    clamp: Clamp = (0.0, 1.0),
) -> Tensor:
    """Fast gradient sign method (Goodfellow et al., 2015).

    x_adv = clamp(x + eps · sign(∇_x CE(model(normalize(x)), y))). Entries
    with zero gradient are left unperturbed.

    Args:
        model: maps a (normalised) batch to logits (m, c); its mode is not changed.
        x: (m, *input_shape) clean inputs in pixel space; must lie in ``clamp``.
        y: (m,) integer true classes.
        eps: L∞ budget ≥ 0, in pixel units.
        normalize: optional pixel → model-input map applied inside the attack
            (e.g. :class:`Normalize`); must be differentiable.
        clamp: (lo, hi) valid pixel range, or ``None`` for no clamping.

    Returns:
        (m, *input_shape) adversarial inputs, detached, same dtype/device as
        ``x``, with ‖x_adv − x‖_∞ ≤ eps.
    """
    eps = check_non_negative(eps, "eps")
    clamp = _check_clamp(clamp)
    _check_inputs(model, x, y, clamp, normalize)
    x = x.detach()
    grad = _input_gradient(model, x, y, normalize)
    x_adv = x + eps * grad.sign().to(x.dtype)
    if clamp is not None:
        x_adv = x_adv.clamp(clamp[0], clamp[1])
    return x_adv


def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    step_size: float,
    steps: int,
    random_start: bool = True,
    normalize: Optional[Callable[[Tensor], Tensor]] = None,
    clamp: Clamp = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """L∞ projected gradient descent on the cross-entropy (Madry et al., 2018).

    Starting from x (or, with ``random_start``, from x + δ with δ uniform in
    [−eps, eps] element-wise), repeat ``steps`` times:
    x_adv ← Π(x_adv + step_size · sign(∇ CE(model(normalize(x_adv)), y))),
    where Π clips element-wise onto the eps-ball around x intersected with the
    clamp range (the random start is projected too). The last iterate is
    returned.

    Args:
        model: maps a (normalised) batch to logits (m, c); its mode is not changed.
        x: (m, *input_shape) clean inputs in pixel space; must lie in ``clamp``.
        y: (m,) integer true classes.
        eps: L∞ budget ≥ 0, in pixel units.
        step_size: step α > 0 in pixel units (commonly eps/4 or 2.5·eps/steps).
        steps: number of steps ≥ 1.
        random_start: start from a uniform random point of the eps-ball.
        normalize: optional pixel → model-input map, see :func:`fgsm`.
        clamp: (lo, hi) valid pixel range, or ``None`` for no clamping.
        generator: draws the random start (on its own device); ``None`` uses a
            fresh generator seeded with 0, so results are reproducible and the
            global RNG is never touched (but then every call starts from the
            same noise pattern: pass one generator to vary it across batches).

    Returns:
        (m, *input_shape) adversarial inputs, detached, same dtype/device as
        ``x``, inside the eps-ball and the clamp range.
    """
    eps = check_non_negative(eps, "eps")
    step_size = check_positive(step_size, "step_size")
    steps = check_positive_int(steps, "steps")
    if not isinstance(random_start, bool):
        raise TypeError(f"random_start must be a bool, got {brief(random_start)}")
    check_generator(generator)
    clamp = _check_clamp(clamp)
    _check_inputs(model, x, y, clamp, normalize)

    x = x.detach()
    lower, upper = _bounds(x, eps, clamp)
    x_adv = x
    if random_start and eps > 0:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        x_adv = torch.max(torch.min(x + (2 * u - 1) * eps, upper), lower)
    for _ in range(steps):
        grad = _input_gradient(model, x_adv, y, normalize)
        x_adv = torch.max(torch.min(x_adv + step_size * grad.sign().to(x.dtype), upper), lower)
    return x_adv.detach()


@torch.no_grad()
def error_under_attack(
    model: Callable[[Tensor], Tensor],
    batches: Iterable[Tuple[Tensor, Tensor]],
    attack: Optional[Callable[..., Tensor]],
    *,
    device: Optional[Union[str, torch.device]] = None,
    **attack_kwargs,
) -> float:
    """Top-1 error (%) of ``model`` on adversarial versions of every batch.

    For each (x, y) in ``batches``: x_adv = attack(model, x, y, **attack_kwargs),
    then the prediction is argmax model(normalize(x_adv)), where ``normalize``
    is ``attack_kwargs.get("normalize")``. ``attack=None`` gives the clean
    error (``normalize`` is still honoured). The model's mode is not changed:
    call ``model.eval()`` first.

    Args:
        model: maps a (normalised) batch to logits (m, c).
        batches: iterable of (x, y), x (m, *input_shape) in pixel space and
            y (m,) integer classes, e.g. a DataLoader.
        attack: e.g. :func:`fgsm` or :func:`pgd`, or ``None``.
        device: move each batch there first (default: leave it where it is).
        **attack_kwargs: passed to ``attack``, e.g. ``eps=8/255, step_size=2/255,
            steps=10, normalize=Normalize(mean, std), generator=g``. One
            generator passed here is shared by (and advances across) batches.

    Returns:
        Error in % over all examples.

    Raises:
        ValueError: ``batches`` is empty (after iterating it), bad batch shapes.
    """
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module mapping x to logits), got {type(model).__name__}")
    if attack is not None and not callable(attack):
        raise TypeError(f"attack must be callable (e.g. fgsm or pgd) or None, got {type(attack).__name__}")
    normalize = attack_kwargs.get("normalize")
    if normalize is not None and not callable(normalize):
        raise TypeError(f"normalize must be None or a callable, got {type(normalize).__name__}")
    wrong, total = 0, 0
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("batches must yield (x, y) pairs")
        x, y = batch[0], batch[1]
        if device is not None:
            x, y = x.to(device), y.to(device)
        if not isinstance(y, Tensor) or y.dim() != 1 or not isinstance(x, Tensor) or x.shape[0] != y.shape[0]:
            raise ValueError("each batch must be (x, y) with x (m, ...) and y (m,) tensors")
        x_adv = attack(model, x, y, **attack_kwargs) if attack is not None else x
        logits = model(normalize(x_adv) if normalize is not None else x_adv)
        wrong += int((logits.argmax(dim=1) != y.to(logits.device)).sum())
        total += y.shape[0]
    if total == 0:
        raise ValueError("batches must hold at least one example")
    return 100.0 * wrong / total
