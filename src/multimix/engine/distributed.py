"""The trainer's side of several processes: rank-0-first work, the DDP step module, failures, communication.

The collectives themselves (all-gather with gradient, sums over ranks, the
process group) are in :mod:`multimix.distributed`, below the methods that use
them.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Dict, TypeVar

import torch
from torch import Tensor, nn

from ..distributed import broadcast_object, is_distributed, is_main, torch_distributed

__all__ = ["DistributedError", "run_on_main", "main_first", "is_collective_failure", "MethodModule", "wrap_ddp",
           "mixing_communication", "format_bytes", "format_communication"]

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed: another process crashed, was killed, or did not answer within the timeout."""


def _transportable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    An exception raised by ``fn`` is raised on every rank (so no rank is left
    waiting). The result must be picklable; it is sent with
    ``broadcast_object_list`` (a checkpoint's state, for instance, so that
    other nodes need not see rank 0's file system).
    """
    if not is_distributed():
        return fn()
    payload: Any = None
    if is_main():
        try:
            payload = ("ok", fn())
        except Exception as err:
            payload = ("error", _transportable(err))
    kind, value = broadcast_object(payload)
    if kind == "error":
        raise value
    return value


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (e.g. data download or generation into a cache).

    If it fails on rank 0, every rank raises rank 0's exception.
    """
    if not is_distributed():
        return fn()
    if is_main():
        try:
            result = fn()
        except Exception as err:
            broadcast_object(_transportable(err))
            raise
        broadcast_object(None)
        return result
    err = broadcast_object(None)
    if err is not None:
        raise err
    return fn()


_FAILURE_MARKERS = ("gloo", "nccl", "c10d", "connection closed by peer", "connection reset by peer", "processgroup",
                    "watchdog")


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from a failed collective (a peer died or hung)."""
    dist_error = getattr(torch_distributed(), "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    if type(err) is not RuntimeError:  # gloo raises plain RuntimeErrors; our own errors subclass it
        return False
    message = str(err).lower()
    return any(marker in message for marker in _FAILURE_MARKERS)


# ------------------------------------------------------------------ DDP

class MethodModule(nn.Module):
    """``forward(x, y) = method(model, x, y)``: the unit DistributedDataParallel wraps.

    DDP synchronises gradients only for work done inside its own ``forward``,
    while methods call ``model.encode``/``pool``/``head``; wrapping the whole
    loss computation makes every parameter use visible to DDP. The model is a
    submodule (its parameters are DDP's); the method is a plain attribute, so
    an EMA teacher it holds is not synchronised (each rank updates its own
    copy from identical student weights).
    """

    def __init__(self, model: nn.Module, method: Callable[[nn.Module, Tensor, Tensor], Tensor]):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.method(self.model, x, y)


def wrap_ddp(model: nn.Module, method, device: torch.device, **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel(MethodModule(model, method))`` on ``device``."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(MethodModule(model, method), device_ids=device_ids, **ddp_kwargs)


# ------------------------------------------------------------------ communication

def mixing_communication(*, batch_size: int, world_size: int, embed_dim: int, num_classes: int,
                         num_parameters: int, positions: int = 1, dense_targets: bool = False,
                         element_bytes: int = 4, target_bytes: int = 4, gradient_bytes: int = 4) -> Dict[str, float]:
    """Bytes moved per training step and rank by global mixing, against DDP's gradient all-reduce.

    Exact counts from tensor sizes (not timings). With m = ``batch_size``, W
    ranks, embedding dim d, r spatial ``positions`` (1 for pooled MultiMix) and
    c classes:

    - ``gather_forward_bytes``: the gathered embeddings and targets each rank
      holds after the forward all-gather, m·W·d·r · element_bytes +
      m·W·c[·r] · target_bytes (``element_bytes`` = 2 for bfloat16 embeddings
      under autocast; soft targets are float32);
    - ``gather_backward_bytes``: the embedding gradient entering the backward
      reduce-scatter, m·W·d·r · element_bytes (targets carry no gradient);
    - ``allreduce_bytes``: DDP's gradient buffer, P · gradient_bytes.

    ``*_sent_bytes`` are what each rank puts on the wire with ring algorithms:
    (W−1)/W of the gathered tensors, and 2(W−1)/W of the gradient buffer.
    """
    m, w = batch_size, world_size
    z = m * w * embed_dim * positions * element_bytes
    y = m * w * num_classes * (positions if dense_targets else 1) * target_bytes
    grads = num_parameters * gradient_bytes
    share = (w - 1) / w
    out = {
        "batch_size": m, "world_size": w, "embed_dim": embed_dim, "positions": positions, "num_classes": num_classes,
        "num_parameters": num_parameters,
        "gather_forward_bytes": z + y,
        "gather_backward_bytes": z,
        "gather_total_bytes": 2 * z + y,
        "allreduce_bytes": grads,
        "gather_sent_bytes": share * (2 * z + y),
        "allreduce_sent_bytes": 2 * share * grads,
    }
    out["ratio"] = out["gather_total_bytes"] / grads if grads else float("inf")
    out["sent_ratio"] = out["gather_sent_bytes"] / out["allreduce_sent_bytes"] if w > 1 and grads else float("nan")
    return out


def format_bytes(n: float) -> str:
    """1.50 MiB, 3.00 KiB, 12 B."""
    for unit, size in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_communication(c: Dict[str, float]) -> str:
    """One line: gathered bytes per step and rank against the gradient all-reduce."""
    return (f"global mixing over W={c['world_size']} x m={c['batch_size']}: all-gather "
            f"{format_bytes(c['gather_forward_bytes'])} forward + reduce-scatter {format_bytes(c['gather_backward_bytes'])} "
            f"backward per step and rank, vs gradient all-reduce {format_bytes(c['allreduce_bytes'])} "
            f"({c['num_parameters']:,} parameters): {100 * c['ratio']:.1f}% (exact tensor sizes, not timings)")
