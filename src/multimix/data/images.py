"""Image data sets through torchvision: CIFAR-10/100 (:func:`cifar`) and any ImageFolder tree (:func:`image_folder`).

Also holds the train/eval transforms, the per-data-set normalisation
statistics and the helper that cuts the train/val/test splits, plus the
entries :func:`multimix.data.load_dataset` dispatches ``"cifar10"``,
``"cifar100"`` and ``"imagefolder"`` to.

Image files are untrusted: before any training, :func:`check_images_readable`
decodes every image a run will read (train, validation and test), so a
truncated or corrupt file is refused up front, naming it, instead of stopping
the run in the middle of an epoch (or after a whole epoch, for a test image).
An image larger than :data:`MAX_IMAGE_PIXELS` (a decompression bomb: a small
file that decodes to gigabytes) is refused from its header, before decoding,
at the check and when a training example is loaded. The same pass hashes the
files' bytes for ``Splits.fingerprint``.

CIFAR-10/100 come through torchvision, whose batch files are pickles: it
checks every file's MD5 against the published one before unpickling, so only
the official files are read; the fingerprint is that list of files and MD5s.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch.utils.data import Subset

from .splits import Splits, default_cache_dir, file_entry, fingerprint, read_file, take

__all__ = ["cifar", "image_folder", "load_cifar", "load_image_folder", "load_image", "check_images_readable",
           "MAX_IMAGE_PIXELS"]

MAX_IMAGE_PIXELS = 89_478_485  # PIL's default decompression-bomb limit: 256 MiB of RGB (a 9459 × 9459 image)
_BATCH = 256  # images per task of the checking threads
_DRAFT_PIXELS = 256 * 256  # larger JPEGs are checked at 1/8 scale (the whole stream is still decoded): ~4x faster

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
    splits = _finish_image_splits(train_aug, train_plain, test, num_train, num_test, num_val, seed, (3, 32, 32),
                                  len(train_aug.classes), _CIFAR_MEAN_STD[name])
    # torchvision has checked each file against its published MD5 (else the RuntimeError above): they name the data.
    splits.fingerprint = fingerprint(name, [[cls.base_folder, *entry] for entry in cls.train_list + cls.test_list])
    return splits


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
    entries = []
    for split, subset in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        entries += [[split, *entry] for entry in check_images_readable(subset, root)]
    splits.fingerprint = fingerprint("imagefolder", sorted(entries))
    return splits


def _check_pixels(image, path) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image {path} is {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS} allowed "
                         "(a decompression bomb?)")


def _decode_errors():
    from PIL import Image, UnidentifiedImageError

    return OSError, UnidentifiedImageError, SyntaxError, EOFError, Image.DecompressionBombError


def load_image(path: str):
    """An RGB PIL image; a file PIL cannot decode, or larger than :data:`MAX_IMAGE_PIXELS`, is a ``ValueError``
    naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            _check_pixels(image, path)
            return image.convert("RGB")
    except _decode_errors() as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def _decoded(path: str) -> List[Any]:
    """Decode the image at ``path`` once, fully; its fingerprint entry (path, size, SHA-256 of the bytes)."""
    from PIL import Image

    data = read_file(path, "image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(image, path)
            if image.width * image.height > _DRAFT_PIXELS:  # JPEG: decode every coefficient, scaled down 8x
                image.draft(image.mode, (1, 1))
            image.load()
    except _decode_errors() as err:
        raise ValueError(f"cannot decode image {path}: {err}") from None
    return file_entry(str(path), data)


def _pixels(path: str) -> int:
    """The pixel count in an image file's header, 0 when it has none that PIL reads (the check will say why)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.width * image.height
    except (*_decode_errors(), ValueError):
        return 0


def check_images_readable(dataset, root: Optional[Path] = None, workers: Optional[int] = None) -> List[List[Any]]:
    """Decode every image a (Subset of an) ImageFolder will read, before any training; their fingerprint entries.

    Each image is read and decoded in full (a truncated JPEG passes PIL's ``verify``, which does not decode),
    after its header is checked against :data:`MAX_IMAGE_PIXELS`; the first bad file raises ``ValueError``
    naming it. ``workers`` threads decode (the decoders release the GIL); by default one per CPU (up to 8) when
    the first image is larger than 256 x 256 pixels, else one: small images cost PIL's Python header parsing
    more than decoding, which threads cannot share. Returns ``[path, size, sha256, label]`` per image, in the
    dataset's order, the path relative to ``root`` when given.
    """
    from PIL import Image

    if dataset is None or len(dataset) == 0:
        return []
    indices = dataset.indices if isinstance(dataset, Subset) else range(len(dataset))
    samples = (dataset.dataset if isinstance(dataset, Subset) else dataset).samples
    chosen = [samples[i] for i in indices]
    paths = [path for path, _ in chosen]
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if _pixels(paths[0]) > _DRAFT_PIXELS else 1
    decode = lambda batch: [_decoded(p) for p in batch]  # noqa: E731
    batches = [paths[i:i + _BATCH] for i in range(0, len(paths), _BATCH)]
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with warnings.catch_warnings():  # PIL warns of large images; _check_pixels refuses them in one line instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            entries = [entry for batch in (pool.map if pool else map)(decode, batches) for entry in batch]
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)  # after a bad file, the batches not started are dropped
    out = []
    for entry, (path, label) in zip(entries, chosen):
        if root is not None:
            entry[0] = Path(path).relative_to(root).as_posix()
        out.append([*entry, int(label)])
    return out


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
