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
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ..methods import Method

__all__ = ["MethodMixin"]


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
