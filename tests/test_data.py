"""The data package: MNIST-1D from a fake cache, ImageFolder trees of tiny PNGs, the dispatcher, ShuffledPositions.

Nothing here downloads or generates data: MNIST-1D reads an .npz the test
writes in the loader's cache format, and the image tests write their own
ImageFolder tree under ``tmp_path``.
"""

import sys

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


def _write_tree(root, splits=("train", "test"), classes=("cat", "dog"), per_class=6, size=8):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
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
