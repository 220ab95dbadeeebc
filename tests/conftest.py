import os
from pathlib import Path

import pytest
import torch
from torch import nn

from multimix.contract import MixableClassifier
from multimix.engine import TrainConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Generated MNIST-1D goes to a per-session cache, never the user's ~/.cache."""
    old = os.environ.get("MULTIMIX_CACHE")
    os.environ["MULTIMIX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MULTIMIX_CACHE", None)
    else:
        os.environ["MULTIMIX_CACHE"] = old


class TinyCNN(MixableClassifier):
    """3 stages over 1-D inputs (m, 2, 12) → dense (m, 6, 3); linear head to 4 classes."""

    def __init__(self, num_classes=4):
        super().__init__([
            nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU()),
            nn.Sequential(nn.Conv1d(6, 6, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv1d(6, 6, 3, stride=2, padding=1), nn.ReLU()),
        ], nn.Linear(6, num_classes))


@pytest.fixture
def tiny_model():
    return TinyCNN()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 12, generator=g)
    y = torch.randint(0, 4, (8,), generator=g)
    return x, y


def tiny_config(tmp_path, **kw) -> TrainConfig:
    """A run of a few seconds: MNIST-1D, 192 train / 128 test examples, a width-8 CNN, one epoch, out in tmp_path/run."""
    base = dict(dataset="mnist1d", num_train=192, num_test=128, model="cnn1d", width=8, epochs=1, batch_size=64,
                progress=False, out_dir=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def tiny():
    """``tiny(tmp_path, **overrides)``: the :func:`tiny_config` of a test."""
    return tiny_config


def is_png(path, min_bytes=5000) -> bool:
    """Whether ``path`` is a PNG file of more than ``min_bytes`` bytes."""
    path = Path(path)
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > min_bytes


@pytest.fixture
def png_ok():
    """``png_ok(path, min_bytes=5000)``: whether a plot was written."""
    return is_png


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A tiny ImageFolder tree: 3 classes, 12 train and 4 test images each, 16×16 JPEGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("test", 4)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(16, 16, 3, generator=g) * 80 + 80 * c).byte().numpy()
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def load_script(path):
    """A script of examples/ or benchmarks/ imported as a module (they are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
