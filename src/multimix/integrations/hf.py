"""MultiMix in the Hugging Face Transformers ``Trainer``: ``MixingTrainer(method=..., model=..., args=..., ...)``.

::

    method = multimix.create_method("multimix", n=1000)
    trainer = MixingTrainer(model=AutoModelForSequenceClassification.from_config(config), args=args,
                            train_dataset=train, eval_dataset=test, method=method)
    trainer.train()

MultiMix mixes the classifier's input (BERT's pooled output after its
dropout, a ViT's class token after its layer norm). The classifier of every
supported model is linear, so g(ΛZ) = Λ g(Z): the mixed logits are Λ times the
logits of the model's own forward. The loss therefore needs nothing but that
forward, called on the model the Trainer wraps:

- DDP-safe: the wrapped model's ``forward`` runs (no submodule is called by
  hand, so DDP sees every parameter use and the processes keep equal weights);
- autocast: ``bf16=True`` / ``fp16=True`` apply, since accelerate's autocast
  wraps that forward; the mixing itself runs in float32;
- gradient accumulation: the loss is a per-micro-batch mean
  (``loss_is_scaled_for_ga = False``), divided once by the Trainer;
- evaluation and prediction use the model's own loss, not a random mixed one.

Supported: ``AutoModelForSequenceClassification`` and
``AutoModelForImageClassification`` models whose classifier (``classifier``
or ``score``) is an ``nn.Linear`` (or ``Flatten`` then ``Linear``) on a pooled
embedding and whose logits are (m, c): BERT, DistilBERT, ALBERT, MobileBERT,
GPT-2 (``score``); ViT, DeiT, BEiT, Swin, ConvNeXt, ResNet. Models whose head
has a hidden layer (RoBERTa, ELECTRA, DeBERTa-v2) are refused in one line naming
the architecture. Methods: MultiMix (``multimix``, any ``mix_scope``) with any
criterion; self-distillation is not supported here (use the library's trainer or
Lightning).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import transformers
from torch import Tensor, nn

from ..methods import MultiMixMethod

__all__ = ["MixingTrainer", "find_classifier", "LogitsView"]

CLASSIFIER_ATTRIBUTES = ("classifier", "score")


def find_classifier(model: nn.Module) -> nn.Linear:
    """The linear map from a model's pooled embedding to its logits (``classifier`` or ``score``); ``ValueError``
    naming the architecture when the head is not linear (MultiMix at its input needs g(ΛZ) = Λ g(Z))."""
    head = None
    for name in CLASSIFIER_ATTRIBUTES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if (isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear)
                and all(isinstance(m, (nn.Flatten, nn.Identity)) for m in head[:-1])):
            return head[-1]
        if head is not None:
            break
    found = f"its classifier is a {type(head).__name__}" if head is not None else "it has no classifier or score"
    raise ValueError(f"{type(model).__name__}: {found}, not a linear map of a pooled embedding, so MultiMix cannot "
                     "mix the classifier's input through the model's own forward (supported: BERT, DistilBERT, "
                     "ALBERT, MobileBERT, GPT-2, ViT, DeiT, BEiT, Swin, ConvNeXt, ResNet)")


class LogitsView(nn.Module):
    """The model contract over logits already computed: encode and pool are the identity, the head too.

    With a linear classifier g, the MultiMix terms of g's input Z are those of g(Z) under the identity head:
    mixed logits Λ g(Z), clean logits g(Z).
    """

    def __init__(self):
        super().__init__()
        self.head = nn.Identity()

    def encode(self, x: Tensor, start: int = 0, end: Optional[int] = None) -> Tensor:
        return x

    def pool(self, features: Tensor) -> Tensor:
        return features


class MixingTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose training loss is a MultiMix method's at the classifier input.

    Args:
        method: a :class:`multimix.MultiMixMethod` (``multimix.create_method("multimix", ...)``); its
            ``num_classes`` is read from ``model.config.num_labels`` when unset.
        *args, **kwargs: the ``transformers.Trainer`` arguments.
    """

    loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides it by the accumulation steps, once

    def __init__(self, *args, method: MultiMixMethod, **kwargs):
        if not isinstance(method, MultiMixMethod) or method.uses_dense_features:
            raise TypeError(f"method must be a multimix MultiMix method (multimix.create_method('multimix', ...)), "
                            f"got {type(method).__name__}")
        if method.distill is not None:
            raise ValueError("self-distillation is not supported by MixingTrainer; use multimix's trainer or the "
                             "Lightning integration")
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # transformers < 5: a per-batch mean, divided by the GA steps
        find_classifier(self.model)
        if method.num_classes is None:
            method.num_classes = int(self.model.config.num_labels)
        self.method = method
        self.logits_view = LogitsView()

    def compute_loss(self, model: nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch=None):
        """Training: the method's loss of the logits of ``model(**inputs)`` (the wrapped model's forward, under the
        Trainer's autocast); evaluation and prediction: the model's own loss."""
        if not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if logits.dim() != 2:
            raise ValueError(f"{type(self.model).__name__} gives logits of shape {tuple(logits.shape)}; MixingTrainer "
                             "needs one (m, c) row per example (sequence or image classification)")
        self.attach_method()
        loss = self.method(self.logits_view, logits.float(), labels)  # mixing in float32, whatever the autocast
        return (loss, outputs) if return_outputs else loss

    def attach_method(self) -> None:
        """Count the method's steps on the optimiser's ``step()`` (once per optimiser step under accumulation)."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper holds torch's
        if optimizer is not None and not self.method.attached_to(optimizer):
            self.method.attach(optimizer, self.model)
