"""Several processes with ``torch.distributed``: process group and collectives.

Training runs one process per GPU (or per CPU worker) under ``torchrun``, which
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. Everything here is a no-op for a single process
(``WORLD_SIZE`` unset or 1, and no process group initialised by the caller),
so the same code runs on a laptop and on many nodes.

This module depends on torch only (the methods layer imports it). What only
the trainer needs (rank-0-first helpers, the DDP step module, failure
detection, communication accounting) is in :mod:`multimix.engine.distributed`.

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
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "init_from_env", "is_distributed", "comm_device", "rank", "world_size", "local_rank", "is_main", "barrier", "cleanup",
    "all_gather", "all_gather_with_grad", "mean_across_ranks", "sum_across_ranks", "broadcast_object",
    "broadcast_buffers", "torch_distributed", "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 600.0


def torch_distributed():
    """The ``torch.distributed`` module (imported on first use)."""
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    dist = torch_distributed()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    dist = torch_distributed()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    dist = torch_distributed()
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
    dist = torch_distributed()
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
    dist = torch_distributed()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch_distributed().barrier()


def comm_device() -> torch.device:
    """Where small tensors for collectives live: the current GPU for NCCL, else the CPU."""
    dist = torch_distributed()
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ collectives with autograd

def _all_gather_into(output: Tensor, tensor: Tensor) -> None:
    dist = torch_distributed()
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(output, tensor)


def _reduce_scatter_sum(output: Tensor, tensor: Tensor) -> None:
    dist = torch_distributed()
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
    dist = torch_distributed()
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
    torch_distributed().broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. batch-norm running statistics) to every rank."""
    if not is_distributed():
        return
    dist = torch_distributed()
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
