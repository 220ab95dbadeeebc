"""The data package: MNIST-1D from a fake cache, ImageFolder trees of tiny PNGs, the dispatcher, ShuffledPositions.

Nothing here downloads or generates data: MNIST-1D reads an .npz the test
writes in the loader's cache format, and the image tests write their own
ImageFolder tree under ``tmp_path``.
"""

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import multimix.data as data_package
from multimix.data import DATASETS, ShuffledPositions, Splits, default_cache_dir, image_folder, load_dataset, mnist1d
from multimix.data.splits import take

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def mnist1d_cache(tmp_path, monkeypatch):
    """A cache dir holding a small fake ``mnist1d-5000-seed42.npz``; the real generator is made unimportable."""
    rng = np.random.default_rng(0)
    arrays = dict(x=rng.standard_normal((60, 40)), y=rng.integers(0, 10, 60),
                  x_test=rng.standard_normal((30, 40)), y_test=rng.integers(0, 10, 30))
    # Small requests need max(ceil(need_train / 0.8), ceil(num_test / 0.2), 5000) = 5000 samples.
    np.savez(tmp_path / "mnist1d-5000-seed42.npz", **arrays)
    # Any attempt to generate raises ImportError, also after an earlier test imported the real generator.
    for name in ("mnist1d", "mnist1d.data"):
        monkeypatch.setitem(sys.modules, name, None)
    return tmp_path, arrays


def _write_tree(root, splits=("train", "test"), classes=("cat", "dog"), per_class=6, size=8, ext="png"):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.{ext}")
    return root


@pytest.fixture
def image_tree(tmp_path):
    """``tmp_path/{train,test}/{cat,dog}/`` with 6 random 8x8 PNGs each (12 train, 12 test images)."""
    return _write_tree(tmp_path)


# ------------------------------------------------------------------ MNIST-1D

def test_mnist1d_reads_the_cache(mnist1d_cache):
    cache, arrays = mnist1d_cache
    splits = mnist1d(num_train=20, num_test=15, num_val=5, cache_dir=cache)
    assert isinstance(splits, Splits)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 5, 15)
    assert splits.input_shape == (1, 40) and splits.num_classes == 10
    assert splits.mean is None and splits.std is None
    x, y = splits.train[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and y.dtype == torch.long
    # Validation = the first num_val rows of the generator's training part; train = the rows after them.
    val_x, val_y = splits.val.tensors
    train_x, train_y = splits.train.tensors
    torch.testing.assert_close(val_x[:, 0], torch.tensor(arrays["x"][:5], dtype=torch.float32))
    torch.testing.assert_close(val_y, torch.tensor(arrays["y"][:5]))
    torch.testing.assert_close(train_x[:, 0], torch.tensor(arrays["x"][5:25], dtype=torch.float32))
    assert not any(torch.equal(v, t) for v in val_x for t in train_x)
    torch.testing.assert_close(splits.test.tensors[0][:, 0], torch.tensor(arrays["x_test"][:15], dtype=torch.float32))


def test_mnist1d_through_load_dataset(mnist1d_cache):
    cache, _ = mnist1d_cache
    splits = load_dataset("mnist1d", data_dir=str(cache), num_train=10, num_test=8)
    assert (len(splits.train), splits.val, len(splits.test)) == (10, None, 8)
    assert splits.input_shape == (1, 40)


def test_mnist1d_errors(mnist1d_cache, tmp_path):
    cache, _ = mnist1d_cache
    with pytest.raises(ValueError, match="num_train"):
        mnist1d(num_train=0, num_test=5, cache_dir=cache)
    with pytest.raises(ValueError, match="num_test"):
        mnist1d(num_train=5, num_test=-1, cache_dir=cache)
    with pytest.raises(ImportError, match="mnist1d package"):  # not cached and the generator is missing
        mnist1d(num_train=10, num_test=10, data_seed=7, cache_dir=tmp_path / "empty")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIMIX_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MULTIMIX_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "multimix")


# ------------------------------------------------------------------ ImageFolder

def test_image_folder_sizes_and_statistics(image_tree):
    splits = load_dataset("imagefolder", data_dir=str(image_tree), num_train=5, num_test=4, num_val=3, image_size=8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 3, 4)
    assert splits.input_shape == (3, 8, 8) and splits.num_classes == 2
    assert splits.mean == IMAGENET_MEAN and splits.std == IMAGENET_STD
    x, y = splits.train[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y in (0, 1)
    assert not set(splits.val.indices) & set(splits.train.indices)

    everything = image_folder(str(image_tree), size=8)
    assert (len(everything.train), everything.val, len(everything.test)) == (12, None, 12)


def test_image_folder_subsets_follow_the_seed(image_tree):
    def indices(seed):
        s = image_folder(str(image_tree), size=8, num_train=6, num_test=5, num_val=3, seed=seed)
        return s.train.indices, s.val.indices, s.test.indices

    assert indices(0) == indices(0)
    assert indices(0) != indices(1)


def test_validation_images_are_not_augmented(image_tree):
    splits = image_folder(str(image_tree), size=8, num_val=4, augment=True)
    for i in range(len(splits.val)):
        assert torch.equal(splits.val[i][0], splits.val[i][0])
    # Random crop (padding 1) + horizontal flip: some of 10 draws of one training image differ.
    draws = [splits.train[0][0] for _ in range(10)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])

    plain = image_folder(str(image_tree), size=8, num_val=4, augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])


def test_image_folder_errors(tmp_path):
    missing_test = _write_tree(tmp_path / "a", splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"train/<class>/ and .*test/<class>/"):
        image_folder(str(missing_test))
    missing_train = _write_tree(tmp_path / "b", splits=("test",))
    with pytest.raises(FileNotFoundError, match=r"train/<class>/"):
        image_folder(str(missing_train))

    mismatched = _write_tree(tmp_path / "c", splits=("train",), per_class=2)
    _write_tree(mismatched, splits=("test",), classes=("cat", "fox"), per_class=2)
    with pytest.raises(ValueError, match="class folders differ"):
        image_folder(str(mismatched))

    tree = _write_tree(tmp_path / "d", per_class=2)
    with pytest.raises(ValueError, match="val_size"):
        image_folder(str(tree), num_val=4)
    with pytest.raises(ValueError, match="num_test"):
        image_folder(str(tree), num_test=-1)


def test_loading_leaves_the_global_rng_alone(image_tree, mnist1d_cache):
    cache, _ = mnist1d_cache
    state = torch.get_rng_state()
    load_dataset("imagefolder", data_dir=str(image_tree), num_train=5, num_test=4, num_val=3)
    load_dataset("mnist1d", data_dir=str(cache), num_train=10, num_test=8, num_val=2)
    assert torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------------------ dispatcher and helpers

def test_load_dataset_errors():
    assert DATASETS == ("mnist1d", "cifar10", "cifar100", "imagefolder", "adult", "fsdd", "planetoid")
    with pytest.raises(ValueError, match="valid datasets: mnist1d, cifar10, cifar100, imagefolder, adult, fsdd, planetoid"):
        load_dataset("mnist2d")
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("imagefolder")


def test_cifar_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10 not found"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_public_names():
    for name in data_package.__all__:
        assert getattr(data_package, name) is not None


def test_take():
    dataset = TensorDataset(torch.arange(10))
    assert take(dataset, None, 0, "n") is dataset
    assert take(dataset, 10, 0, "n") is dataset
    subset = take(dataset, 4, 3, "n")
    assert len(subset) == 4 and subset.indices == take(dataset, 4, 3, "n").indices
    with pytest.raises(ValueError, match="num_test"):
        take(dataset, 0, 0, "num_test")


# ------------------------------------------------------------------ ShuffledPositions

def test_shuffled_positions():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4).repeat(5, 1, 1, 1)
    y = torch.arange(5)
    dataset = TensorDataset(x + torch.arange(5).view(5, 1, 1, 1), y)
    shuffled = ShuffledPositions(dataset, seed=0)
    assert len(shuffled) == 5
    for i in range(5):
        original, label = dataset[i]
        out, out_label = shuffled[i]
        assert out.shape == original.shape and out_label == label
        # Each channel keeps its values; positions are permuted, the same way for every input and channel.
        for c in range(2):
            assert torch.equal(out[c].flatten().sort().values, original[c].flatten().sort().values)
            assert torch.equal(out[c].flatten(), original[c].flatten()[shuffled.permutation])
    assert not torch.equal(shuffled[0][0], dataset[0][0])
    assert torch.equal(ShuffledPositions(dataset, seed=0).permutation, shuffled.permutation)
    assert not torch.equal(ShuffledPositions(dataset, seed=1).permutation, shuffled.permutation)


# ------------------------------------------------------------------ untrusted files: caches, images, fingerprints

def test_mnist1d_cache_is_read_without_pickle_and_checked(mnist1d_cache):
    cache, arrays = mnist1d_cache
    splits = mnist1d(num_train=20, num_test=15, cache_dir=cache)
    fingerprint = splits.fingerprint
    assert isinstance(fingerprint, str) and len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert mnist1d(num_train=20, num_test=15, cache_dir=cache).fingerprint == fingerprint  # the same data
    assert mnist1d(num_train=21, num_test=15, cache_dir=cache).fingerprint != fingerprint  # one more example
    assert mnist1d(num_train=20, num_test=15, num_val=3, cache_dir=cache).fingerprint != fingerprint


class _FakeGenerator:
    """Stands in for ``mnist1d.data``: what ``make_dataset`` returns, counting the calls."""

    calls = 0

    @staticmethod
    def get_dataset_args():
        import types
        return types.SimpleNamespace(num_samples=None, seed=None)

    @classmethod
    def make_dataset(cls, args):
        cls.calls += 1
        rng = np.random.default_rng(args.seed)
        n = int(args.num_samples * 0.8)
        return {"x": rng.standard_normal((n, 40)), "y": rng.integers(0, 10, n),
                "x_test": rng.standard_normal((args.num_samples - n, 40)),
                "y_test": rng.integers(0, 10, args.num_samples - n), "t": np.arange(40), "templates": None}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled", "nan", "labels"])
def test_a_corrupt_mnist1d_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, damage):
    import types

    path = tmp_path / "mnist1d-5000-seed42.npz"
    good = _FakeGenerator.make_dataset(types.SimpleNamespace(num_samples=5000, seed=1))
    np.savez(path, **{k: good[k] for k in ("x", "y", "x_test", "y_test")})
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "pickled":  # an object array needs pickle to load: refused, never unpickled
        np.savez(path, x=np.array([{"a": 1}] * 3, dtype=object), y=good["y"], x_test=good["x_test"],
                 y_test=good["y_test"])
    elif damage == "nan":
        good["x"][7, 3] = np.nan
        np.savez(path, **{k: good[k] for k in ("x", "y", "x_test", "y_test")})
    else:
        good["y_test"][2] = 11
        np.savez(path, **{k: good[k] for k in ("x", "y", "x_test", "y_test")})
    module = types.ModuleType("mnist1d.data")
    module.get_dataset_args, module.make_dataset = _FakeGenerator.get_dataset_args, _FakeGenerator.make_dataset
    monkeypatch.setitem(sys.modules, "mnist1d", types.ModuleType("mnist1d"))
    monkeypatch.setitem(sys.modules, "mnist1d.data", module)
    calls = _FakeGenerator.calls
    with pytest.warns(RuntimeWarning, match=r"MNIST-1D cache .*mnist1d-5000-seed42\.npz is unreadable .*generating "
                                            r"it again") as caught:
        splits = mnist1d(num_train=20, num_test=15, cache_dir=tmp_path)
    assert len(caught) == 1 and "\n" not in str(caught[0].message), [str(w.message) for w in caught]
    assert _FakeGenerator.calls == calls + 1 and len(splits.train) == 20
    assert torch.isfinite(splits.train.tensors[0]).all() and int(splits.test.tensors[1].max()) < 10
    with np.load(path, allow_pickle=False) as rebuilt:  # replaced by a good cache: the next run reads it silently
        assert rebuilt["x"].shape == (4000, 40)
    mnist1d(num_train=20, num_test=15, cache_dir=tmp_path)
    assert _FakeGenerator.calls == calls + 1


def _jpeg_tree(root, per_class=3):
    return _write_tree(root, per_class=per_class, size=40, ext="jpg")


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_truncated_jpeg_that_passes_verify_is_refused_before_training(tmp_path, split, capsys):
    from PIL import Image

    from multimix.cli import main

    tree = _jpeg_tree(tmp_path / "tree")
    broken = tree / split / "dog" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:-20])
    with Image.open(broken) as image:
        image.verify()  # the old check's call: it does not decode, and passes
    with pytest.raises(ValueError) as err:
        image_folder(str(tree), size=8)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot decode image {broken}: ") and "truncated" in message
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(tree), "--image-size", "8", "--model",
                 "preact_resnet_small", "--batch-size", "2", "--epochs", "1", "--no-progress",
                 "--out-dir", str(tmp_path / "run")])
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in stderr and str(broken) in stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first epoch


def _png_header_only(path, width, height):
    """A PNG file that declares ``width`` x ``height`` pixels in a valid header, and holds almost nothing."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_images_beyond_the_pixel_bound_are_refused_from_their_header(image_tree, monkeypatch):
    from multimix.data import images

    bomb = image_tree / "test" / "cat" / "bomb.png"
    _png_header_only(bomb, 50_000, 50_000)  # 2.5e9 pixels: 7.5 GB decoded, 100 bytes on disk
    with pytest.raises(ValueError, match=r"cannot decode image .*bomb\.png: .*decompression bomb") as err:
        image_folder(str(image_tree), size=8)
    assert "\n" not in str(err.value)
    bomb.unlink()
    _png_header_only(bomb, 9_000, 10_000)  # 9e7 pixels: above our bound, below the one PIL raises at
    with pytest.raises(ValueError, match=rf"image {bomb} is 9000 x 10000 pixels, more than the 89478485 allowed"):
        image_folder(str(image_tree), size=8)
    with pytest.raises(ValueError, match=r"9000 x 10000 pixels"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's own DecompressionBombWarning
        images.load_image(str(bomb))  # the loader of training examples has the same bound
    bomb.unlink()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 63)  # the 8 x 8 images: 64 pixels
    with pytest.raises(ValueError, match=r"is 8 x 8 pixels, more than the 63 allowed"):
        image_folder(str(image_tree), size=8)


@pytest.mark.parametrize("workers", [1, 3])
def test_every_image_is_decoded_by_the_check(tmp_path, workers):
    from multimix.data.images import check_images_readable
    from torchvision import datasets

    tree = _jpeg_tree(tmp_path / "tree", per_class=300)  # more than one batch of 256
    broken = tree / "train" / "dog" / "250.jpg"
    broken.write_bytes(broken.read_bytes()[:-20])
    dataset = datasets.ImageFolder(str(tree / "train"))
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        check_images_readable(dataset, workers=workers)
    broken.unlink()
    dataset = datasets.ImageFolder(str(tree / "train"))
    entries = check_images_readable(dataset, tree, workers=workers)
    assert [e[0] for e in entries] == [Path(p).relative_to(tree).as_posix() for p, _ in dataset.samples]
    assert [e[3] for e in entries] == [label for _, label in dataset.samples]
    assert entries[0][1] == (tree / entries[0][0]).stat().st_size


def test_image_folder_fingerprint_identifies_the_images_used(image_tree, tmp_path):
    import shutil

    first = image_folder(str(image_tree), size=8, num_val=2).fingerprint
    assert len(first) == 16 and image_folder(str(image_tree), size=8, num_val=2).fingerprint == first
    copy = tmp_path / "copy"
    shutil.copytree(image_tree, copy)
    assert image_folder(str(copy), size=8, num_val=2).fingerprint == first  # the same files elsewhere
    assert image_folder(str(copy), size=8, num_val=3).fingerprint != first  # another split of them
    from PIL import Image
    Image.new("RGB", (8, 8), (1, 2, 3)).save(copy / "test" / "cat" / "0.png")  # one test image's pixels
    assert image_folder(str(copy), size=8, num_val=2).fingerprint != first


def test_cifar_fingerprint_is_the_list_of_md5_checked_files(tmp_path, monkeypatch):
    """torchvision refuses a CIFAR file whose MD5 is not the published one, so that list names the data."""
    from torchvision import datasets

    class Checked(torch.utils.data.Dataset):
        base_folder = "cifar-10-batches-py"
        train_list = [["data_batch_1", "c99cafc152244af753f735de768cd75f"]]
        test_list = [["test_batch", "40351d587109b95175f43aff81a1287e"]]
        classes = [str(c) for c in range(10)]

        def __init__(self, root, train=True, download=False, transform=None):
            self.n = 20 if train else 10

        def __len__(self):
            return self.n

    monkeypatch.setattr(datasets, "CIFAR10", Checked)
    first = load_dataset("cifar10", data_dir=str(tmp_path)).fingerprint
    assert len(first) == 16 and load_dataset("cifar10", data_dir=str(tmp_path / "x"), num_val=2).fingerprint == first
    monkeypatch.setattr(Checked, "test_list", [["test_batch", "0" * 32]])
    assert load_dataset("cifar10", data_dir=str(tmp_path)).fingerprint != first


def test_batches_of_tensors_are_the_data_loaders_batches_without_its_per_example_fetch():
    from torch.utils.data import DataLoader, Subset

    from multimix.data import batches

    x, y = torch.randn(23, 3, 5), torch.randint(0, 4, (23,))
    tensors = TensorDataset(x, y)
    for size in (1, 7, 23, 64):
        ours = list(batches(tensors, size, "cpu"))
        reference = list(DataLoader(tensors, batch_size=size))
        assert len(ours) == len(reference)
        for (a, b), (c, d) in zip(ours, reference):
            assert torch.equal(a, c) and torch.equal(b, d)
    subset = Subset(tensors, [3, 1, 4, 1, 5])  # any other dataset: the DataLoader, as before
    (a, b), = batches(subset, 8, "cpu")
    assert torch.equal(a, x[[3, 1, 4, 1, 5]]) and torch.equal(b, y[[3, 1, 4, 1, 5]])
