"""Adapters that put torchvision ResNets and timm models under the model contract.

Neither torchvision nor timm is imported here: the adapters use the models'
public attributes (torchvision ResNet: conv1, bn1, relu, maxpool, layer1–4,
avgpool, fc; timm: ``forward_features``, ``forward_head(pre_logits=True)``,
``get_classifier()``).
"""

from __future__ import annotations

import fnmatch
from typing import Set

from torch import Tensor, nn

from ..contract import MixableClassifier

__all__ = ["TorchvisionResNet", "TimmModel", "adapt"]

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")


class TorchvisionResNet(MixableClassifier):
    """A torchvision ResNet (resnet18 … resnet152, wide/ResNeXt variants) as stem + four stages.

    Parameters are shared with the wrapped model (no copy).
    """

    def __init__(self, model: nn.Module):
        missing = [p for p in _RESNET_PARTS if not hasattr(model, p)]
        if missing:
            raise TypeError(f"model is not a torchvision ResNet (missing {', '.join(missing)})")
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        super().__init__([stem, model.layer1, model.layer2, model.layer3, model.layer4], model.fc)


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


class TimmModel(MixableClassifier):
    """A timm model: one stage (``forward_features``), timm's own pooling, its classifier as head.

    Dense features follow the contract's (m, d, *spatial) layout: CNN maps
    (m, C, H, W) stay as they are; token sequences (m, L, d) of transformers
    become (m, d, L), and NHWC maps (``output_fmt == "NHWC"``) become NCHW.
    Manifold mixup can mix at layer 0 (input) or 1 (features).

    Pooling is the model's own (``forward_head(pre_logits=True)``): a ViT's
    class token, or its average over patch tokens, with its ``fc_norm``. The
    positions that Dense MultiMix mixes and classifies one by one are the
    patch tokens only: a ViT's class and register tokens
    (``num_prefix_tokens``) are not positions of the image.
    """

    def __init__(self, model: nn.Module):
        for attr in ("forward_features", "forward_head", "get_classifier"):
            if not hasattr(model, attr):
                raise TypeError(f"model is not a timm model (missing {attr})")
        head = model.get_classifier()
        if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
            raise ValueError("the timm model has no classifier; create it with num_classes > 0")
        super().__init__([_TimmFeatures(model)], head)

    def _native_layout(self, features: Tensor) -> str:
        """timm's layout of these features: tokens (NLC) when 3-D, else NHWC or NCHW by ``output_fmt``.

        Read from the tensor and the model, never stored, so ``pool`` does not depend on the last ``encode``
        (the contract's layouts (m, d, L) and (m, d, H, W) have the same number of dimensions as timm's).
        """
        if features.dim() == 3:
            return "NLC"
        fmt = str(getattr(self.stages[0].model, "output_fmt", "NCHW"))
        return "NHWC" if fmt.endswith("NHWC") else "NCHW"

    def encode(self, x: Tensor, start: int = 0, end=None) -> Tensor:
        features = super().encode(x, start, end)
        if start == 0 and (end is None or end >= 1):
            layout = self._native_layout(features)
            if layout == "NLC":
                return features.transpose(1, 2)
            if layout == "NHWC":
                return features.permute(0, 3, 1, 2)
        return features

    def no_weight_decay(self) -> Set[str]:
        """The timm model's own ``no_weight_decay()`` (position embeddings, class tokens…) under this adapter's
        parameter names, matched as timm matches them (``fnmatch`` patterns; names the model lacks ignored)."""
        timm_model = self.stages[0].model
        patterns = set(timm_model.no_weight_decay()) if callable(getattr(timm_model, "no_weight_decay", None)) else set()
        exempt = {id(p) for name, p in timm_model.named_parameters()
                  if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)}
        return {name for name, p in self.named_parameters() if id(p) in exempt}

    def positions(self, features: Tensor) -> Tensor:
        """(m, d, r): every spatial position of a CNN map; a token model's tokens after its prefix tokens."""
        prefix = int(getattr(self.stages[0].model, "num_prefix_tokens", 0) or 0)
        if features.dim() == 3 and prefix:
            return features[:, :, prefix:]
        return features.flatten(2)

    def pool(self, features: Tensor) -> Tensor:
        layout = self._native_layout(features)
        if layout == "NLC":
            features = features.transpose(1, 2)
        elif layout == "NHWC":
            features = features.permute(0, 2, 3, 1)
        return self.stages[0].model.forward_head(features, pre_logits=True)


def adapt(model: nn.Module) -> MixableClassifier:
    """Wrap a model under the contract: returns it as is if it already follows it."""
    if isinstance(model, MixableClassifier):
        return model
    if all(hasattr(model, p) for p in _RESNET_PARTS):
        return TorchvisionResNet(model)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return TimmModel(model)
    raise TypeError(f"don't know how to adapt {type(model).__name__}: subclass multimix.contract.MixableClassifier "
                    "or pass a torchvision ResNet or a timm model")
