"""Tabular data and the MLP: UCI Adult from tiny CSVs in the real format, errors naming the file, the model contract.

Nothing here reads the real data or downloads: every test writes its own pair
of CSVs (no header, ", "-separated, "?" for missing values, test labels with a
trailing period, the UCI test file's "|1x3 Cross validator" first line) under
``tmp_path``; the download path is exercised against a fake ``urlopen``.
"""

import io

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import multimix
import multimix.data as data_package
from multimix.data.tabular import (
    ADULT_COLUMNS, ADULT_NUMERIC, adult, adult_arrays, adult_frames, load_adult,
)
from multimix.models.mlp import MLP, mlp

pytest.importorskip("pandas")
pytest.importorskip("sklearn")


# ------------------------------------------------------------------ tiny CSVs

def _row(age, workclass, education, occupation, sex, country, label, hours=40, gain=0):
    edu_num = {"Bachelors": 13, "HS-grad": 9, "Masters": 14}[education]
    married = "Married-civ-spouse" if label.startswith(">") else "Never-married"
    fields = [age, workclass, 100000 + 1000 * (age if isinstance(age, int) else 1), education, edu_num, married,
              occupation, "Husband" if sex == "Male" else "Wife", "White", sex, gain, 0, hours, country, label]
    return ", ".join(str(f) for f in fields)


TRAIN_ROWS = [  # ages 20–50, one '?' age, '?' in workclass and occupation; 6 rows per class
    _row(20, "Private", "HS-grad", "Sales", "Male", "United-States", "<=50K"),
    _row(22, "Private", "HS-grad", "?", "Female", "United-States", "<=50K", hours=20),
    _row(25, "?", "Bachelors", "Sales", "Female", "Mexico", "<=50K"),
    _row("?", "Private", "HS-grad", "Adm-clerical", "Male", "United-States", "<=50K", hours=35),
    _row(30, "State-gov", "HS-grad", "Adm-clerical", "Female", "Mexico", "<=50K"),
    _row(33, "Private", "Bachelors", "Sales", "Male", "United-States", "<=50K", hours=45),
    _row(38, "Private", "Masters", "Exec-managerial", "Male", "United-States", ">50K", hours=50, gain=5000),
    _row(40, "Self-emp-inc", "Bachelors", "Exec-managerial", "Male", "United-States", ">50K", hours=60),
    _row(44, "Private", "Masters", "Prof-specialty", "Female", "United-States", ">50K"),
    _row(46, "State-gov", "Bachelors", "Prof-specialty", "Male", "Mexico", ">50K", hours=55),
    _row(48, "Private", "Masters", "Exec-managerial", "Male", "United-States", ">50K", gain=15000),
    _row(50, "Self-emp-inc", "HS-grad", "Sales", "Male", "United-States", ">50K", hours=70),
]
TEST_ROWS = [  # ages 70–80 (far from the training ages), a country only the test file has, a '?' age
    _row(70, "Private", "HS-grad", "Sales", "Male", "Atlantis", "<=50K."),
    _row(72, "Private", "Bachelors", "Sales", "Female", "United-States", "<=50K."),
    _row("?", "State-gov", "HS-grad", "Adm-clerical", "Female", "?", "<=50K."),
    _row(76, "Private", "Masters", "Exec-managerial", "Male", "United-States", ">50K."),
    _row(78, "Self-emp-inc", "Bachelors", "Prof-specialty", "Male", "Mexico", ">50K."),
    _row(80, "Private", "Masters", "Exec-managerial", "Male", "United-States", ">50K."),
]


def write_adult(root, train=None, test=None):
    """``root/adult-train.csv`` and ``root/adult-test.csv`` in the UCI format; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    train = TRAIN_ROWS if train is None else train
    test = TEST_ROWS if test is None else test
    (root / "adult-train.csv").write_text("\n".join(train) + "\n\n")  # the UCI files end with a blank line
    (root / "adult-test.csv").write_text("|1x3 Cross validator\n" + "\n".join(test) + "\n")
    return root


@pytest.fixture
def adult_dir(tmp_path):
    return write_adult(tmp_path / "adult")


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ reading and splitting

def test_frames_read_the_uci_format(adult_dir):
    train, test = adult_frames(adult_dir)
    assert list(train.columns) == list(ADULT_COLUMNS) == list(test.columns)
    assert (len(train), len(test)) == (12, 6)  # the comment line and the blank line are skipped
    assert set(train["income"]) == set(test["income"]) == {"<=50K", ">50K"}  # test labels without the period
    assert train["age"].isna().sum() == 1 and train["workclass"].isna().sum() == 1  # '?' is missing
    assert test["native-country"].isna().sum() == 1
    assert train["age"].dtype == np.float64


def test_adult_shapes_classes_and_dtypes(adult_dir):
    before = torch.get_rng_state()
    splits = adult(adult_dir)
    assert torch.equal(torch.get_rng_state(), before)  # private generators only
    assert isinstance(splits.train, TensorDataset) and isinstance(splits.test, TensorDataset)
    assert splits.val is None and splits.num_classes == 2 and splits.mean is None
    (x, y), (xt, yt) = splits.train.tensors, splits.test.tensors
    f = splits.input_shape[0]
    assert splits.input_shape == (f,) and x.shape == (12, f) and xt.shape == (6, f)
    assert x.dtype == xt.dtype == torch.float32 and y.dtype == yt.dtype == torch.int64
    assert sorted(y.tolist()) == [0] * 6 + [1] * 6 and sorted(yt.tolist()) == [0, 0, 0, 1, 1, 1]
    assert torch.isfinite(x).all() and torch.isfinite(xt).all()  # imputed
    # 6 numeric columns + one column per training category of the 8 categorical ones
    train_frame, _ = adult_frames(adult_dir)
    categories = sum(train_frame[c].nunique() for c in ADULT_COLUMNS[:-1] if c not in ADULT_NUMERIC)
    assert f == len(ADULT_NUMERIC) + categories


def test_the_preprocessing_is_fitted_on_the_training_rows_only(adult_dir):
    arrays = adult_arrays(adult_dir)
    names = list(arrays.transformer.get_feature_names_out())
    country = [i for i, n in enumerate(names) if n.startswith("categorical__native-country_")]
    assert not any("Atlantis" in n for n in names)
    # the test-only country encodes to all zeros; a known one to a single 1 ('?' → the training mode)
    assert arrays.x_test[0, country].tolist() == [0.0] * len(country)
    assert arrays.x_test[1, country].sum() == 1.0 and arrays.x_test[2, country].sum() == 1.0
    numeric = [names.index(f"numeric__{c}") for c in ADULT_NUMERIC]
    train_numeric = arrays.x_train[:, numeric]
    np.testing.assert_allclose(train_numeric.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_numeric[:, :2].std(0), 1.0, atol=1e-5)  # age, fnlwgt vary in train
    age = names.index("numeric__age")
    assert arrays.x_test[[0, 1, 3, 4, 5], age].min() > 1.5  # ages 70-80 on the training scale: not standardised
    # a missing test age gets the training median, on the training scale
    train_frame, _ = adult_frames(adult_dir)
    ages = train_frame["age"].fillna(train_frame["age"].median())
    np.testing.assert_allclose(arrays.x_test[2, age], (train_frame["age"].median() - ages.mean()) / ages.std(ddof=0),
                               rtol=1e-5)


def test_validation_rows_are_held_out_before_fitting(adult_dir):
    arrays = adult_arrays(adult_dir, num_val=4, seed=3)
    assert (len(arrays.val_rows), len(arrays.train_rows)) == (4, 8)
    assert set(arrays.val_rows).isdisjoint(arrays.train_rows)
    assert sorted([*arrays.val_rows, *arrays.train_rows]) == list(range(12))
    train_frame, _ = adult_frames(adult_dir)
    fit = train_frame.iloc[arrays.train_rows]["age"]
    scaler = arrays.transformer.named_transformers_["numeric"]["scale"]
    np.testing.assert_allclose(scaler.mean_[0], fit.fillna(fit.median()).mean())  # train rows only, val excluded
    np.testing.assert_allclose(arrays.x_train[:, :len(ADULT_NUMERIC)].mean(0), 0.0, atol=1e-5)


def test_validation_split_is_disjoint_and_reproducible(adult_dir):
    first, again = adult(adult_dir, num_val=4, seed=5), adult(adult_dir, num_val=4, seed=5)
    assert len(first.train) == 8 and len(first.val) == 4 and len(first.test) == 6
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors))
    rows = {seed: set(adult_arrays(adult_dir, num_val=4, seed=seed).val_rows.tolist()) for seed in (5, 6, 7)}
    assert len({frozenset(r) for r in rows.values()}) > 1  # the seed chooses the rows


def test_subsets_of_train_and_test(adult_dir):
    splits = adult(adult_dir, num_train=5, num_test=3, num_val=2, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 2, 3)
    arrays = adult_arrays(adult_dir, num_train=5, num_test=3, num_val=2, seed=1)
    assert set(arrays.train_rows).isdisjoint(arrays.val_rows)
    assert len(set(arrays.test_rows.tolist())) == 3
    with pytest.raises(ValueError, match="val_size must be smaller than the training set"):
        adult(adult_dir, num_val=12)


def test_the_registry_entry(adult_dir, monkeypatch):
    # the keyword arguments of load_dataset, including those it does not use
    splits = load_adult("adult", data_dir=str(adult_dir), num_train=None, num_test=None, num_val=3, download=False,
                        augment=True, image_size=32, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    # the folder the archive was extracted into (holding adult/) works too
    assert len(load_adult("adult", data_dir=str(adult_dir.parent), num_train=None, num_test=None, num_val=0).test) == 6
    # without data_dir: the cache's adult/
    monkeypatch.setenv("MULTIMIX_CACHE", str(adult_dir.parent))
    assert len(load_adult("adult", data_dir=None, num_train=4, num_test=None, num_val=0).train) == 4


def test_download_saves_the_uci_files_under_the_expected_names(tmp_path, monkeypatch):
    source = write_adult(tmp_path / "source")
    served = {"adult.data": (source / "adult-train.csv").read_bytes(),
              "adult.test": (source / "adult-test.csv").read_bytes(), "adult.names": b"| names\n"}
    fetched = []

    def fake_urlopen(url, timeout=None):
        fetched.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("multimix.data.tabular.urllib.request.urlopen", fake_urlopen)
    splits = adult(tmp_path / "fetched", download=True)
    assert len(splits.train) == 12 and len(fetched) == 3
    assert all(u.startswith("https://archive.ics.uci.edu/") for u in fetched)
    assert len(adult(tmp_path / "fetched", download=True).test) == 6 and len(fetched) == 3  # not fetched again


# ------------------------------------------------------------------ bad input, one line naming the file

def test_a_missing_directory_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        adult(tmp_path / "nowhere")
    message = _one_line(err)
    assert str(tmp_path / "nowhere") in message
    assert "adult-train.csv" in message and "adult-test.csv" in message
    assert "tar -xzf" in message and "--download" in message


def test_a_missing_file_is_named(adult_dir):
    (adult_dir / "adult-test.csv").unlink()
    with pytest.raises(FileNotFoundError) as err:
        adult(adult_dir)
    assert str(adult_dir / "adult-test.csv") in _one_line(err)


@pytest.mark.parametrize("which", ["train", "test"])
def test_missing_columns_name_the_file_and_the_counts(tmp_path, which):
    short = [r.rsplit(", ", 2)[0] + ", " + r.rsplit(", ", 1)[1] for r in (TRAIN_ROWS if which == "train" else TEST_ROWS)]
    root = write_adult(tmp_path / "adult", **{which: short})
    with pytest.raises(ValueError) as err:
        adult(root)
    message = _one_line(err)
    assert str(root / f"adult-{which}.csv") in message and "14 columns" in message and "expected 15" in message


def test_extra_columns_name_the_file_and_the_counts(tmp_path):
    extra = [r + ", 1" for r in TRAIN_ROWS]
    root = write_adult(tmp_path / "adult", train=extra)
    with pytest.raises(ValueError) as err:
        adult(root)
    message = _one_line(err)
    assert str(root / "adult-train.csv") in message and "16 columns" in message and "expected 15" in message


def test_a_row_with_an_extra_column_names_the_file_and_the_line(tmp_path):
    test = list(TEST_ROWS)
    test[2] += ", 1"
    root = write_adult(tmp_path / "adult", test=test)
    with pytest.raises(ValueError) as err:
        adult(root)
    message = _one_line(err)
    assert str(root / "adult-test.csv") in message and "16 columns" in message and "expected 15" in message


@pytest.mark.parametrize("label", ["maybe", "<=50", ">50K..", "?"])
def test_bad_labels_name_the_file_and_the_value(tmp_path, label):
    test = list(TEST_ROWS)
    test[1] = test[1].rsplit(", ", 1)[0] + ", " + label
    root = write_adult(tmp_path / "adult", test=test)
    with pytest.raises(ValueError) as err:
        adult(root)
    message = _one_line(err)
    assert str(root / "adult-test.csv") in message and "data row 2" in message
    assert (f"income label {label!r}" if label != "?" else "no income label") in message and "'>50K'" in message


def test_a_non_numeric_value_in_a_numeric_column_is_named(tmp_path):
    train = list(TRAIN_ROWS)
    train[4] = "thirty" + train[4][2:]
    root = write_adult(tmp_path / "adult", train=train)
    with pytest.raises(ValueError) as err:
        adult(root)
    message = _one_line(err)
    assert str(root / "adult-train.csv") in message and "age = 'thirty'" in message and "data row 5" in message


@pytest.mark.parametrize("which, row, column, text, expected", [
    ("train", 5, "age", "nan", "is not finite (nan)"),
    ("train", 2, "fnlwgt", "inf", "is not finite (inf)"),
    ("train", 9, "capital-gain", "-1e400", "is not finite (-inf)"),  # overflows to -inf when parsed
    ("test", 2, "hours-per-week", "NaN", "is not finite (nan)"),
    ("test", 4, "age", "3e12", "is 3e+12, beyond the ±1e+09 accepted (a corrupt value?)"),
])
def test_non_finite_or_absurd_numbers_are_refused_naming_file_row_and_column(tmp_path, which, row, column, text,
                                                                              expected):
    rows = {"train": list(TRAIN_ROWS), "test": list(TEST_ROWS)}
    # the largest real values still load: fnlwgt 1,484,705, capital-gain 99,999, hours 99
    fields = _row(90, "Private", "HS-grad", "Sales", "Male", "United-States", "<=50K", hours=99, gain=99999).split(", ")
    fields[ADULT_COLUMNS.index("fnlwgt")] = "1484705"
    rows["train"][0] = ", ".join(fields)
    assert torch.isfinite(adult(write_adult(tmp_path / "good", **rows)).train.tensors[0]).all()
    fields = rows[which][row - 1].split(", ")
    fields[ADULT_COLUMNS.index(column)] = text
    rows[which][row - 1] = ", ".join(fields)
    root = write_adult(tmp_path / "adult", **rows)
    with pytest.raises(ValueError) as err:
        adult(root)
    assert _one_line(err) == f"{root / f'adult-{which}.csv'}: data row {row}: column {column!r} {expected}"


def test_the_fingerprint_identifies_both_files(adult_dir, tmp_path):
    first = adult(adult_dir).fingerprint
    assert len(first) == 16 and adult(adult_dir, num_val=2, num_train=5).fingerprint == first  # same files
    assert adult(adult_dir.parent).fingerprint == first  # the folder the archive extracts adult/ into
    test = list(TEST_ROWS)
    test[1] = test[1].replace("72", "73", 1)  # one test row's age
    other = write_adult(tmp_path / "other", test=test)
    assert adult(other).fingerprint != first
    assert adult(write_adult(tmp_path / "again")).fingerprint == first


def test_an_empty_file_is_named(tmp_path):
    root = write_adult(tmp_path / "adult")
    (root / "adult-train.csv").write_text("")
    with pytest.raises(ValueError) as err:
        adult(root)
    assert str(root / "adult-train.csv") in _one_line(err)


# ------------------------------------------------------------------ the MLP

def test_mlp_follows_the_contract():
    model = MLP(num_features=7, num_classes=3, width=16, depth=3)
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    dense = model.encode(x)
    assert model.num_stages == 3 and dense.shape == (5, 16)
    assert torch.equal(model.pool(dense), dense)  # no positions: pool leaves the embedding as it is
    assert model.head(model.pool(dense)).shape == (5, 3)
    model.eval()
    assert torch.allclose(model(x), model.head(model.pool(model.encode(x))))
    assert torch.allclose(model.encode(model.encode(x, 0, 1), 1), model.encode(x))
    assert multimix.contract.num_classes_of(model) == 3


def test_mlp_factory_and_arguments():
    model = mlp(num_classes=2, width=32, num_features=105)
    assert model.stages[0][0].in_features == 105 and model.head.in_features == 32 and model.num_stages == 2
    assert any(isinstance(m, torch.nn.Dropout) for m in MLP(4, dropout=0.2).modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in MLP(4).modules())
    with pytest.raises(ValueError, match="num_features"):
        mlp(num_classes=2)
    with pytest.raises(ValueError, match="depth"):
        MLP(4, depth=0)
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, dropout=1.0)


@pytest.mark.parametrize("name,kwargs", [("erm", {}), ("multimix", {"n": 64}),
                                         ("manifold_mixup", {"layers": [0, 1, 2]})])
def test_methods_train_the_mlp_on_adult_rows(adult_dir, name, kwargs):
    splits = adult(adult_dir)
    x, y = splits.train.tensors
    model = MLP(splits.input_shape[0], splits.num_classes, width=16)
    method = multimix.create_method(name, num_classes=2, generator=torch.Generator().manual_seed(0), **kwargs)
    loss = method(model, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.skipif("adult" not in data_package.DATASETS, reason="the adult loader is not registered yet")
def test_adult_and_mlp_through_the_registries(adult_dir):
    from multimix.models import build_model

    splits = data_package.load_dataset("adult", data_dir=str(adult_dir), num_val=2)
    assert (len(splits.train), len(splits.val)) == (10, 2)
    model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.input_shape, width=8)
    assert model.head.in_features == 8 and model(splits.test.tensors[0]).shape == (6, 2)
    with pytest.raises(ValueError, match="mlp"):
        build_model("mlp", num_classes=2, input_shape=(1, 40))


def test_a_nan_test_row_stops_the_command_line_before_training(tmp_path, capsys):
    """Before, a NaN test row trained a whole run and wrote a silent ``test_loss: NaN``."""
    from multimix.cli import main

    test = list(TEST_ROWS)
    test[3] = test[3].replace("76", "nan", 1)
    root = write_adult(tmp_path / "adult", test=test)
    code = main(["train", "--dataset", "adult", "--data-dir", str(root), "--model", "mlp", "--width", "8",
                 "--batch-size", "4", "--epochs", "1", "--no-progress", "--out-dir", str(tmp_path / "run")])
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and stderr == (f"multimix train: error: {root / 'adult-test.csv'}: data row 4: column 'age' "
                                    "is not finite (nan)")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
