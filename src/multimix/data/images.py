"""Image data sets through torchvision: CIFAR-10/100 (:func:`cifar`) and any ImageFolder tree (:func:`image_folder`).

Also holds the train/eval transforms, the per-data-set normalisation
statistics and the helper that cuts the train/val/test splits, plus the
entries :func:`multimix.data.load_dataset` dispatches ``"cifar10"``,
``"cifar100"`` and ``"imagefolder"`` to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Subset

from .splits import Splits, default_cache_dir, take

__all__ = ["cifar", "image_folder", "load_cifar", "load_image_folder", "load_image", "check_images_readable"]

_CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _image_transforms(train: bool, size: int, mean_std, augment: bool):
    try:
        from torchvision import transforms as T
    except ImportError as err:
        raise ImportError("image data sets need torchvision: pip install 'multimix[vision]'") from err
    steps = []
    if size >= 128:  # ImageNet-style: random-resized crops for training, resize to 8/7 and centre-crop for testing
        if train and augment:
            steps += [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(size * 8 // 7), T.CenterCrop(size)]
    elif train and augment:  # CIFAR-style: random crop with padding, horizontal flip
        steps += [T.Resize(size), T.CenterCrop(size), T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    else:
        steps += [T.Resize(size), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(*mean_std)]
    return T.Compose(steps)


def cifar(name: str = "cifar10", root: Optional[str] = None, *, download: bool = False, num_train: Optional[int] = None,
          num_test: Optional[int] = None, num_val: int = 0, augment: bool = True, seed: int = 0) -> Splits:
    """CIFAR-10/100 through torchvision, with random crop (padding 4) and horizontal flip."""
    try:
        from torchvision import datasets
    except ImportError as err:
        raise ImportError("CIFAR needs torchvision: pip install 'multimix[vision]'") from err
    root = Path(root or default_cache_dir() / name)
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train_aug = cls(str(root), train=True, download=download, transform=_image_transforms(True, 32, _CIFAR_MEAN_STD[name], augment))
        train_plain = cls(str(root), train=True, download=False, transform=_image_transforms(False, 32, _CIFAR_MEAN_STD[name], False))
        test = cls(str(root), train=False, download=False, transform=_image_transforms(False, 32, _CIFAR_MEAN_STD[name], False))
    except RuntimeError as err:
        raise FileNotFoundError(f"{name} not found under {root}; pass --download to fetch it with torchvision "
                                f"or --data-dir pointing at an existing copy") from err
    return _finish_image_splits(train_aug, train_plain, test, num_train, num_test, num_val, seed, (3, 32, 32),
                                len(train_aug.classes), _CIFAR_MEAN_STD[name])


def image_folder(root: str, *, size: int = 32, num_train: Optional[int] = None, num_test: Optional[int] = None,
                 num_val: int = 0, augment: bool = True, seed: int = 0) -> Splits:
    """An ImageFolder tree ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``).

    Images are resized and centre-cropped to ``size`` for evaluation; training
    uses random crop (padding size/8) and horizontal flip. Normalisation uses
    the ImageNet statistics.
    """
    try:
        from torchvision import datasets
    except ImportError as err:
        raise ImportError("ImageFolder data needs torchvision: pip install 'multimix[vision]'") from err
    root = Path(root)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise FileNotFoundError(f"ImageFolder data must have {root}/train/<class>/ and {root}/test/<class>/ (or val/); "
                                f"not found under {root}. For the CIFAR-10 JPEG copy: "
                                f"mkdir -p DIR && tar -xzf cifar10-jpeg.tar.gz -C DIR")
    folder = lambda path, train, aug: datasets.ImageFolder(  # noqa: E731
        str(path), transform=_image_transforms(train, size, _IMAGENET_MEAN_STD, aug), loader=load_image)
    train_aug, train_plain, test = folder(train_dir, True, augment), folder(train_dir, False, False), \
        folder(test_dir, False, False)
    if train_aug.classes != test.classes:
        raise ValueError(f"train and test class folders differ under {root}")
    if len(train_aug.classes) < 2:
        raise ValueError(f"{train_dir} has {len(train_aug.classes)} class folder(s); a classifier needs at least 2")
    splits = _finish_image_splits(train_aug, train_plain, test, num_train, num_test, num_val, seed, (3, size, size),
                                  len(train_aug.classes), _IMAGENET_MEAN_STD)
    for subset in (splits.train, splits.val, splits.test):
        check_images_readable(subset)
    return splits


def load_image(path: str):
    """An RGB PIL image; a file PIL cannot decode is a ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def check_images_readable(dataset) -> None:
    """Open the header of every image a (Subset of an) ImageFolder will read, before any training.

    Reading a header is cheap (no decoding), and it finds the truncated and non-image files that would
    otherwise stop a run in the middle of an epoch; the error names the file.
    """
    from PIL import Image, UnidentifiedImageError

    if dataset is None:
        return
    indices = dataset.indices if isinstance(dataset, Subset) else range(len(dataset))
    samples = (dataset.dataset if isinstance(dataset, Subset) else dataset).samples
    for i in indices:
        path = samples[i][0]
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from err


def _finish_image_splits(train_aug, train_plain, test, num_train, num_test, num_val, seed, shape, num_classes,
                         mean_std) -> Splits:
    # The validation examples come from the training images without augmentation.
    order = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(seed)).tolist()
    if num_val >= len(order):
        raise ValueError(f"val_size must be smaller than the training set ({len(order)} images), got {num_val}")
    val = Subset(train_plain, order[:num_val]) if num_val > 0 else None
    rest = order[num_val:]
    if num_train is not None:
        rest = rest[:num_train]
    return Splits(Subset(train_aug, rest), val, take(test, num_test, seed, "num_test"), shape, num_classes,
                  *mean_std)


def load_cifar(name: str, *, data_dir: Optional[str], num_train: Optional[int], num_test: Optional[int],
               num_val: int, download: bool, augment: bool, seed: int, **unused) -> Splits:
    """``load_dataset("cifar10" | "cifar100", ...)``: :func:`cifar` rooted at ``data_dir`` (``image_size`` is not used)."""
    return cifar(name, data_dir, download=download, num_train=num_train, num_test=num_test, num_val=num_val,
                 augment=augment, seed=seed)


def load_image_folder(name: str, *, data_dir: Optional[str], num_train: Optional[int], num_test: Optional[int],
                      num_val: int, augment: bool, image_size: int, seed: int, **unused) -> Splits:
    """``load_dataset("imagefolder", ...)``: :func:`image_folder` over ``data_dir``, which it requires."""
    if data_dir is None:
        raise ValueError("dataset 'imagefolder' needs --data-dir pointing at a folder with train/ and test/")
    return image_folder(data_dir, size=image_size, num_train=num_train, num_test=num_test, num_val=num_val,
                        augment=augment, seed=seed)
