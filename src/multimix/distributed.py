"""Several processes with ``torch.distributed``: process group, collectives, DDP step module.

Training runs one process per GPU (or per CPU worker) under ``torchrun``, which
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Everything here is a no-op for a single process
(``WORLD_SIZE`` unset or 1, and no process group initialised by the caller),
so the same code runs on a laptop and on many nodes.

This module depends on torch only (the methods layer imports it).

The global-batch all-gather
---------------------------
:func:`all_gather_with_grad` concatenates a tensor (m, ...) from all W ranks
into (m·W, ...) in rank order, and its backward is a reduce-scatter with SUM:
rank r's slice receives Σ_r' ∂L_r'/∂z_r, the gradient of the *sum* of all
ranks' losses. DistributedDataParallel then averages parameter gradients over
the W ranks, so W ranks each minimising the mean loss over their own n rows
give exactly the gradient of the mean over all n·W rows — the same as one
process with the concatenated batch and Λ = vstack(Λ_0, …, Λ_{W−1}). No extra
scaling is needed (tested in ``tests/test_distributed.py``).
"""

from __future__ import annotations

import datetime
import os
import pickle
from typing import Any, Callable, Dict, List, Optional, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "init_from_env", "is_distributed", "comm_device", "rank", "world_size", "local_rank", "is_main", "barrier", "cleanup",
    "all_gather", "all_gather_with_grad", "mean_across_ranks", "sum_across_ranks", "broadcast_object",
    "run_on_main", "main_first", "broadcast_buffers", "MethodModule", "wrap_ddp", "DistributedError",
    "is_collective_failure", "mixing_communication", "format_communication", "format_bytes", "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 600.0

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed: another process crashed, was killed, or did not answer within the timeout."""


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` from torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group torchrun describes in the environment.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or when a
    process group already exists (the caller owns it). Otherwise initialises
    it and returns True: the caller should call :func:`cleanup` at the end.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default nccl when CUDA is available, else gloo.
        timeout_s: how long a collective may wait for a peer before raising
            (gloo) or aborting the process (NCCL's watchdog), so that a crashed
            or hung rank ends the job instead of hanging it.
    """
    dist = _dist()
    if not dist.is_available():
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return False
    if dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE is set but {key} is not: launch with torchrun "
                               "(torchrun --nproc_per_node=N -m multimix -- train ...)")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    kwargs: Dict[str, Any] = {}
    if backend == "nccl":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the communicator to this GPU (torch >= 2.3)
    timeout = datetime.timedelta(seconds=float(timeout_s))
    try:
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    except TypeError:  # older torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return True


def cleanup() -> None:
    """Destroy the default process group (safe to call when there is none)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


def comm_device() -> torch.device:
    """Where small tensors for collectives live: the current GPU for NCCL, else the CPU."""
    dist = _dist()
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ collectives with autograd

def _all_gather_into(output: Tensor, tensor: Tensor) -> None:
    dist = _dist()
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(output, tensor)


def _reduce_scatter_sum(output: Tensor, tensor: Tensor) -> None:
    dist = _dist()
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    try:
        fn(output, tensor, op=dist.ReduceOp.SUM)
    except (RuntimeError, NotImplementedError) as err:  # backends without reduce-scatter (old gloo)
        if "not supported" not in str(err).lower() and "unsupported" not in str(err).lower():
            raise
        full = tensor.clone()
        dist.all_reduce(full, op=dist.ReduceOp.SUM)
        output.copy_(full.narrow(0, rank() * output.shape[0], output.shape[0]))


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: reduce-scatter (SUM) of the gradient."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        out = tensor.new_empty((world_size() * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_into(out, tensor)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // world_size(), *grad.shape[1:]))
        _reduce_scatter_sum(out, grad)
        return out


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (m, ...) from every rank, in rank order, into (m·W, ...); differentiable.

    The backward sums the gradients that all ranks computed for each slice and
    returns its own slice to each rank (a reduce-scatter), i.e. rank r gets
    ∂(Σ_r' L_r')/∂tensor_r. Every rank must pass the same shape. Returns
    ``tensor`` itself for a single process.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_gather(tensor: Tensor) -> Tensor:
    """Like :func:`all_gather_with_grad` without gradient (for targets and other constants)."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().contiguous()
    out = tensor.new_empty((world_size() * tensor.shape[0], *tensor.shape[1:]))
    _all_gather_into(out, tensor)
    return out


def sum_across_ranks(value):
    """Sum of a float or tensor over ranks (the same type back); the value itself for one process."""
    if not is_distributed():
        return value
    dist = _dist()
    if isinstance(value, Tensor):
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out
    t = torch.tensor([float(value)], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


def mean_across_ranks(value):
    """Mean of a float or tensor over ranks (the same type back); the value itself for one process."""
    if not is_distributed():
        return value
    return sum_across_ranks(value) / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable object, on every rank."""
    if not is_distributed():
        return obj
    box: List[Any] = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. batch-norm running statistics) to every rank."""
    if not is_distributed():
        return
    dist = _dist()
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


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
    dist_error = getattr(_dist(), "DistError", None)
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
