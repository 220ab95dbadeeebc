"""Models following the contract (``encode``, ``pool``, ``head``) and adapters for others."""

from __future__ import annotations

import torch

from ..contract import eval_mode
from .adapters import TimmModel, TorchvisionResNet, adapt
from .cnn1d import CNN1D, cnn1d
from .gcn import GCN, gcn, graphmix_gcn
from .mlp import MLP, mlp
from .speech_cnn import SpeechCNN, speech_cnn
from .preact_resnet import PreActResNet, preact_resnet18, preact_resnet_small

__all__ = ["CNN1D", "cnn1d", "GCN", "gcn", "graphmix_gcn", "MLP", "mlp", "SpeechCNN", "speech_cnn", "PreActResNet", "preact_resnet18", "preact_resnet_small",
           "TorchvisionResNet", "TimmModel", "adapt", "MODELS", "create_model", "build_model", "check_model_name",
           "check_input_shape", "DEFAULT_MODELS", "default_model_for"]

MODELS = {
    "cnn1d": cnn1d,
    "preact_resnet18": preact_resnet18,
    "preact_resnet_small": preact_resnet_small,
    "mlp": mlp,
    "speech_cnn": speech_cnn,
    "gcn": gcn,
    "graphmix_gcn": graphmix_gcn,
}


def create_model(name: str, **kwargs):
    """Build a model by name (see ``MODELS``); keyword arguments go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


# The model each data family trains when none is named: the papers' network per family (data-set names may carry an
# argument after a colon, planetoid:CiteSeer).
DEFAULT_MODELS = {
    "mnist1d": "cnn1d",
    "cifar10": "preact_resnet18",
    "cifar100": "preact_resnet18",
    "imagefolder": "preact_resnet18",
    "adult": "mlp",
    "fsdd": "speech_cnn",
    "planetoid": "gcn",
}


def default_model_for(dataset: str) -> str:
    """The model a data set trains by default (:data:`DEFAULT_MODELS`, by the family before any colon);
    ``ValueError`` naming the families for an unknown one."""
    family = dataset.split(":", 1)[0] if isinstance(dataset, str) else dataset
    if family not in DEFAULT_MODELS:
        raise ValueError(f"no default model for dataset {dataset!r}; families with one: {', '.join(DEFAULT_MODELS)}")
    return DEFAULT_MODELS[family]


# Dimensions of one example each built-in model takes (default 3: images (C, H, W); 0: a node index).
MODEL_INPUT_DIMS = {"cnn1d": 2, "mlp": 1, "gcn": 0, "graphmix_gcn": 0}
# Models over one fixed graph: built with the data's graph tensors (``Splits.graph``).
GRAPH_MODELS = ("gcn", "graphmix_gcn")

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_model(name: str, *, num_classes: int, input_shape, width=None, input_dtype=torch.float32, graph=None):
    """A model for a data set, checked with one forward pass on a zero batch of ``input_shape``.

    A model that cannot take this input (a ViT built for another image size, a
    1-D network on images) fails here with one line naming the model and the
    input shape, rather than in the middle of training. ``graph`` (the data's
    ``Splits.graph``) is required by the graph models and refused by the others.
    """
    model = create_for_data(name, num_classes=num_classes, input_shape=input_shape, width=width, graph=graph)
    check_input_shape(model, name, input_shape, input_dtype)
    return model


def check_input_shape(model, name: str, input_shape, input_dtype=torch.float32) -> None:
    """Raise ``ValueError`` unless ``model`` maps a (2, *input_shape) batch to (2, c) logits."""
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(2, *input_shape, dtype=input_dtype))
    except (RuntimeError, AssertionError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"model {name!r} cannot take inputs of shape {tuple(input_shape)}: {first}") from err


def create_for_data(name: str, *, num_classes: int, input_shape, width=None, graph=None):
    """A model for a data set: built-in names, torchvision ResNets by name, or ``timm:<name>``.

    Args:
        name: one of ``MODELS``, ``TORCHVISION_RESNETS``, or ``timm:<model name>``.
        num_classes: c.
        input_shape: (channels, *spatial) of one example.
        width: channels of ``cnn1d`` / first-group width of the PreActResNets / hidden units of ``gcn``
            (default: theirs).
        graph: ``{"features": X (N, F), "edge_index": (2, E)}`` for the graph models (``GRAPH_MODELS``).
    """
    if (name in GRAPH_MODELS) != (graph is not None):
        if graph is None:
            raise ValueError(f"model {name!r} classifies the nodes of a graph; use it with a graph data set "
                             "(e.g. --dataset planetoid:Cora)")
        raise ValueError(f"graph data (node indices) needs a graph model ({', '.join(GRAPH_MODELS)}), not {name!r}")
    if name in GRAPH_MODELS:
        return MODELS[name](num_classes, width=width, **graph)
    in_channels = input_shape[0]
    if name in MODELS:
        dims = MODEL_INPUT_DIMS.get(name, 3)  # the input's dimensions, channels (or features) first
        if len(input_shape) != dims:
            kind = {1: "table rows (F,)", 2: "1-D sequences", 3: "images or spectrograms (C, H, W)"}[dims]
            raise ValueError(f"model {name!r} is for {kind}, but the data has examples of shape {tuple(input_shape)}")
        kwargs = {"num_classes": num_classes, ("num_features" if name == "mlp" else "in_channels"): input_shape[0]}
        if width is not None:
            kwargs["channels" if name == "cnn1d" else "width"] = width
        return MODELS[name](**kwargs)
    if name in TORCHVISION_RESNETS:
        try:
            import torchvision
        except ImportError as err:
            raise ImportError(f"model {name!r} needs torchvision: pip install 'multimix[vision]'") from err
        return adapt(getattr(torchvision.models, name)(num_classes=num_classes))
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise ImportError(f"model {name!r} needs timm: pip install 'multimix[vision]'") from err
        arch = name.split(":", 1)[1]
        if arch not in timm.list_models():
            raise ValueError(f"unknown timm model {arch!r} (see timm.list_models())")
        kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels)
        if len(input_shape) == 3:
            try:  # ViTs and other patch models are built for one image size: build them for the data's
                return adapt(timm.create_model(arch, img_size=tuple(input_shape[1:]), **kwargs))
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
        return adapt(timm.create_model(arch, **kwargs))
    check_model_name(name)
    raise AssertionError("unreachable: check_model_name accepted an unknown model")


def check_model_name(name: str) -> str:
    """Raise ``ValueError`` listing the valid names unless :func:`build_model` knows ``name``."""
    if name in MODELS or name in TORCHVISION_RESNETS or name.startswith("timm:"):
        return name
    valid = ", ".join([*MODELS, *TORCHVISION_RESNETS, "timm:<name>"])
    raise ValueError(f"unknown model {name!r}; valid models: {valid}")
