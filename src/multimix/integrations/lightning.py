"""MultiMix in PyTorch Lightning: a mixin so that ``training_step`` is one line.

::

    class Classifier(MethodMixin, lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = multimix.models.cnn1d(num_classes=10)
            self.method = multimix.create_method("multimix", n=1000,
                                                 distill=multimix.SelfDistillation(self.model))

        def training_step(self, batch, batch_idx):
            return self.mixed_loss(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)

The method is a submodule of the LightningModule, so Lightning saves its EMA
teacher in every checkpoint, restores it with ``fit(ckpt_path=...)`` and
``load_from_checkpoint``, and moves and casts it with the model under every
precision (``"bf16-true"``, ``"64-true"``, mixed). :meth:`MethodMixin.mixed_loss`
hooks the method's per-step update to the optimiser's ``step()``, so the
teacher moves once per optimiser step, with gradient accumulation too (not
once per batch). Under ``strategy="ddp"`` the loss runs inside DDP's forward
(as ``training_step`` does), a method with ``mix_scope="global"`` mixes the
global batch through its all-gather, and a method without a generator draws
differently on every process (seeded from the seed, the rank and the step).

The method's random generator is not a tensor of any module, so the mixin adds its state (one per process) to
Lightning's checkpoint in ``on_save_checkpoint`` and restores it in ``on_load_checkpoint``: a fit resumed with
``ckpt_path`` draws the same Λ as an uninterrupted one, and ends with the same parameters. A module that overrides
these hooks calls ``super()`` in them.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import distributed as D
from ..checks import brief
from ..methods import Method

__all__ = ["MethodMixin", "GENERATORS_KEY", "generator_states", "restore_generator"]

GENERATORS_KEY = "multimix_generators"  # the checkpoint's entry: one generator state per process, by rank


def generator_states(method: Method) -> List[Optional[Dict[str, Any]]]:
    """Every process's ``{"device", "state"}`` of ``method.generator`` (None where it has drawn nothing yet), by
    rank; a collective under a process group, so every process calls it (as Lightning saves on every rank)."""
    generator = method.generator
    own = None if generator is None else {"device": str(generator.device), "state": generator.get_state()}
    if not D.is_distributed():
        return [own]
    states: List[Optional[Dict[str, Any]]] = [None] * D.world_size()
    D.torch_distributed().all_gather_object(states, own)
    return states


def restore_generator(method: Method, states: Sequence[Optional[Dict[str, Any]]]) -> None:
    """Give ``method`` this process's generator of ``states`` (:func:`generator_states`); a warning, and the
    method's own fresh stream, when the checkpoint was saved by another number of processes or on a device this
    machine lacks."""
    if not isinstance(states, (list, tuple)) or not all(
            own is None or (isinstance(own, Mapping) and isinstance(own.get("device"), str)
                            and isinstance(own.get("state"), Tensor)) for own in states):
        raise ValueError(f"checkpoint entry {GENERATORS_KEY!r} must be a list of generator states "
                         f"({{'device', 'state'}} or None per process), got {brief(states)}")
    world, rank = D.world_size(), D.rank()
    if len(states) != world:
        warnings.warn(f"the checkpoint holds the method's random stream of {len(states)} process(es), this run has "
                      f"{world}: the method draws a fresh stream, so the run does not continue bit for bit",
                      stacklevel=3)
        return
    own = states[rank]
    if own is None:
        return
    device = torch.device(own["device"])
    if device.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn(f"the checkpoint's method generator was on {device}, and CUDA is not available: the method "
                          "draws a fresh stream", stacklevel=3)
            return
        device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU (Lightning set it)
    generator = torch.Generator(device=device)
    generator.set_state(own["state"].cpu())
    method.generator = generator


class MethodMixin:
    """A LightningModule mixin: ``self.mixed_loss(batch)`` is the method's loss of a batch (x, y, ...).

    The module holds the method as ``self.method`` and the model it trains (under :mod:`multimix.contract`) as
    ``self.model``; other names go in ``method_attribute`` / ``model_attribute``. One optimiser: the first one
    of ``configure_optimizers`` drives the method's update.
    """

    method_attribute = "method"
    model_attribute = "model"

    def mixed_loss(self, batch: Sequence[Any], log: bool = True) -> Tensor:
        """The 0-d training loss of ``batch`` = (x, y, ...) (logged as ``train_loss`` when ``log``)."""
        method, model = self.mixing_parts()
        x, y = batch[0], batch[1]
        self.attach_method(method, model)
        loss = method(model, x, y)
        if log:
            self.log("train_loss", loss.detach(), prog_bar=True, batch_size=len(x))
        return loss

    def mixing_parts(self):
        """(method, model): the module's attributes named by ``method_attribute`` and ``model_attribute``."""
        method = getattr(self, self.method_attribute, None)
        model = getattr(self, self.model_attribute, None)
        if not isinstance(method, Method):
            raise TypeError(f"{type(self).__name__}.{self.method_attribute} must be a multimix method "
                            f"(multimix.create_method(...)), got {type(method).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__}.{self.model_attribute} must be the nn.Module the method trains, "
                            f"got {type(model).__name__}")
        return method, model

    def attach_method(self, method: Method, model: nn.Module) -> None:
        """Hook ``method.update(model)`` to the first optimiser's ``step()`` (once; again after a new fit builds new
        optimisers), and warn when the teacher's warm-up is longer than the fit."""
        optimizers = self.trainer.optimizers
        if not optimizers:
            raise RuntimeError("mixed_loss needs an optimiser: return one from configure_optimizers")
        optimizer = optimizers[0]
        if not method.attached_to(optimizer):
            method.attach(optimizer, model)
            total = self.trainer.estimated_stepping_batches
            if isinstance(total, int) or (isinstance(total, float) and total != float("inf")):
                method.check_steps(int(total))

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Lightning's hook: add the method's generator state of every process (:data:`GENERATORS_KEY`)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[GENERATORS_KEY] = generator_states(self.mixing_parts()[0])

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Lightning's hook (``fit(ckpt_path=...)``, ``load_from_checkpoint``): restore this process's generator
        (a checkpoint written before the mixin saved it has none: the method draws a fresh stream, as before)."""
        super().on_load_checkpoint(checkpoint)
        states = checkpoint.get(GENERATORS_KEY)
        if states is not None:
            restore_generator(self.mixing_parts()[0], states)
