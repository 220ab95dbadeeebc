"""Tabular data: UCI Adult (census income, Kohavi 1996), read from its CSV files with pandas (:func:`adult`).

The task: predict whether a person's income exceeds $50K a year from 6
numeric and 8 categorical attributes (2 classes; 32,561 training and 16,281
test rows, about 24% positive). Inputs are one row of F features: the numeric
columns median-imputed and standardised, the categorical ones imputed with
their most frequent value and one-hot encoded (F = 105 with all training
rows). The preprocessing is fitted on the training rows only and then applied
to the validation and test rows, so nothing of them leaks into the training
inputs; a category that appears only outside the training rows encodes to
all zeros.

The files are untrusted: each is read whole up to
:data:`~multimix.data.splits.MAX_FILE_BYTES`, and a numeric cell that is not
a number, not finite (``nan``, ``inf``, ``1e400``) or beyond ±
:data:`ADULT_MAX_MAGNITUDE` is refused in one line naming the file, the data
row and the column, so it never reaches the standardisation (where one such
value turns every row's column into NaN or 0). Only ``?`` and an empty field
mean "missing". ``Splits.fingerprint`` hashes both files' names, sizes and
contents.

Layout of the data directory (the names :func:`download_adult` saves the
UCI files ``adult.data``/``adult.test`` under)::

    DIR/adult-train.csv   no header, ", "-separated, "?" for missing, labels <=50K / >50K
    DIR/adult-test.csv    the same, labels with a trailing period (<=50K. / >50K.)

:func:`load_adult` is the entry :func:`multimix.data.load_dataset` dispatches
``"adult"`` to; :func:`adult_frames` and :func:`adult_arrays` give the raw
frames and the preprocessed arrays (the same split) to reference models.
"""

from __future__ import annotations

import io
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..checks import brief, check_int, check_positive_int
from .splits import Splits, check_values, default_cache_dir, file_entry, fingerprint, read_file

__all__ = ["adult", "load_adult", "adult_frames", "adult_arrays", "adult_preprocessor", "download_adult",
           "AdultArrays", "ADULT_COLUMNS", "ADULT_NUMERIC", "ADULT_CATEGORICAL", "ADULT_FILES", "ADULT_URLS",
           "ADULT_MAX_MAGNITUDE"]

# The 15 columns of the UCI files (adult.names), in order; the last is the label.
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income")
ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_CATEGORICAL = ("workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
                     "native-country")
ADULT_LABELS = ("<=50K", ">50K")  # class 0, class 1
ADULT_FILES = {"train": "adult-train.csv", "test": "adult-test.csv"}
# Largest |value| of a numeric cell: a thousand times the largest real one (fnlwgt, 1,484,705); beyond it a value is
# a corrupt file, not a person, and would set the column's scale alone.
ADULT_MAX_MAGNITUDE = 1e9
ADULT_URLS = {
    "adult-train.csv": "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.data",
    "adult-test.csv": "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.test",
    "adult.names": "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/adult.names",
}


def _pandas():
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("the Adult data set needs pandas and scikit-learn: pip install 'multimix[tabular]'") from err
    return pd


# ---------------------------------------------------------------------------
# reading the files
# ---------------------------------------------------------------------------


def _layout_hint(root: Path) -> str:
    return (f"expected {root / ADULT_FILES['train']} and {root / ADULT_FILES['test']} (UCI Adult CSVs: no header, "
            f"', '-separated, '?' for missing). Extract the archive with `mkdir -p DIR && tar -xzf adult.tar.gz -C DIR` "
            f"and pass --data-dir DIR, or pass --download to fetch the UCI files")


def _data_root(root) -> Path:
    """``root``, or ``root/adult`` when only that holds the files (the archive extracts into ``adult/``)."""
    root = Path(root)
    if not (root / ADULT_FILES["train"]).is_file() and (root / "adult" / ADULT_FILES["train"]).is_file():
        return root / "adult"
    return root


def _read_csv(path: Path, *, test: bool):
    """One UCI Adult file as a frame with the 15 named columns, validated; labels without the trailing period.

    Lines starting with ``|`` (the ``|1x3 Cross validator`` line of the UCI test file) and blank lines are skipped.
    """
    pd = _pandas()
    expected = len(ADULT_COLUMNS)
    try:
        frame = pd.read_csv(io.BytesIO(read_file(path, "CSV file")), header=None, skipinitialspace=True,
                            na_values=["?", ""], keep_default_na=False, comment="|", dtype=str)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; expected rows of {expected} comma-separated columns "
                         f"({', '.join(ADULT_COLUMNS)})") from None
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        where = (f"line {found.group(2)} has {found.group(3)} columns where the rows before it have {found.group(1)}"
                 if found else str(err).strip().splitlines()[0])
        raise ValueError(f"{path}: {where}; expected {expected} comma-separated columns "
                         f"({', '.join(ADULT_COLUMNS)})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text CSV file ({err.reason} at byte {err.start}); expected rows of "
                         f"{expected} comma-separated columns") from None
    if frame.shape[1] != expected:
        raise ValueError(f"{path} has {frame.shape[1]} columns; expected {expected} "
                         f"({', '.join(ADULT_COLUMNS)})")
    if len(frame) == 0:
        raise ValueError(f"{path} has no data rows; expected rows of {expected} comma-separated columns")
    frame.columns = list(ADULT_COLUMNS)
    # labels: <=50K / >50K, with a trailing period in the test file
    labels = frame["income"].str.strip().str.removesuffix(".")
    bad = ~labels.isin(ADULT_LABELS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame["income"].iloc[row]
        shown = (f"no income label ('?', or fewer than {expected} columns)" if pd.isna(value)
                 else f"income label {brief(value)}")
        count = int(bad.sum())
        raise ValueError(f"{path}: data row {row + 1} has {shown} ({count} bad label{'s' if count > 1 else ''} in "
                         f"the file); expected '<=50K' or '>50K'{' (with or without a trailing period)' if test else ''}")
    frame["income"] = labels
    for column in ADULT_NUMERIC:
        values = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        with np.errstate(invalid="ignore"):
            bad = frame[column].notna().to_numpy() & ~(np.abs(values.to_numpy()) <= ADULT_MAX_MAGNITUDE)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            text = frame[column].iloc[row]
            try:
                number = float(text)  # "nan", "inf", "1e400", "3e12": a number, not finite or absurd
            except ValueError:
                number = 0.0  # not a number at all: the error after the check says so
            where = f"{path}: data row {row + 1}: column {column!r}"
            check_values(np.array([number]), lambda _, where=where: where, ADULT_MAX_MAGNITUDE)
            raise ValueError(f"{path}: data row {row + 1} has {column} = {brief(text)}; expected a number or '?' "
                             f"(columns: {', '.join(ADULT_COLUMNS)})")
        frame[column] = values
    for column in ADULT_CATEGORICAL:
        frame[column] = frame[column].astype(object)  # one dtype for scikit-learn whatever pandas' string default
    return frame


def adult_frames(root) -> Tuple["pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """The (train, test) frames of the UCI Adult files under ``root``, as read and validated.

    Columns: :data:`ADULT_COLUMNS`; numeric ones as float64, categorical ones as
    strings; missing values (``?``) are NaN. The test labels' trailing period is
    stripped, so ``income`` is ``"<=50K"`` or ``">50K"`` in both. ``root`` may
    also be the folder the archive was extracted into (holding ``adult/``).

    Raises ``FileNotFoundError`` naming the missing path and the expected
    layout, ``ValueError`` naming the file for a wrong column count, a bad
    label or a non-numeric value in a numeric column.
    """
    root = _data_root(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Adult data directory {root} not found; {_layout_hint(root)}")
    for name in ADULT_FILES.values():
        if not (root / name).is_file():
            raise FileNotFoundError(f"Adult data file {root / name} not found; {_layout_hint(root)}")
    return _read_csv(root / ADULT_FILES["train"], test=False), _read_csv(root / ADULT_FILES["test"], test=True)


def download_adult(root) -> Path:
    """Fetch the UCI files into ``root`` under the names the loader reads (those already there are kept)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, url in ADULT_URLS.items():
        path = root / name
        if path.is_file():
            continue
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                out.write(response.read())
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(f"could not download {url} to {path}: {err}") from err
        os.replace(tmp, path)
    return root


# ---------------------------------------------------------------------------
# splits and preprocessing
# ---------------------------------------------------------------------------


def adult_preprocessor():
    """The (unfitted) ColumnTransformer: numeric median-impute + standardise, categorical mode-impute + one-hot."""
    try:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler
    except ImportError as err:
        raise ImportError("the Adult data set needs pandas and scikit-learn: pip install 'multimix[tabular]'") from err
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    return ColumnTransformer([("numeric", numeric, list(ADULT_NUMERIC)),
                              ("categorical", categorical, list(ADULT_CATEGORICAL))], sparse_threshold=0.0)


@dataclass
class AdultArrays:
    """Preprocessed float32 features (N, F) and int64 labels (N,) of each split, and the fitted transformer.

    ``train_rows``/``val_rows`` index the rows of the training file, ``test_rows`` those of the test file.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    transformer: object


def _labels(frame) -> np.ndarray:
    return (frame["income"].to_numpy() == ADULT_LABELS[1]).astype(np.int64)


def adult_arrays(root, *, num_train: Optional[int] = None, num_test: Optional[int] = None, num_val: int = 0,
                 seed: int = 0, frames=None) -> AdultArrays:
    """The splits of :func:`adult` as numpy arrays (what reference models such as scikit-learn's train on).

    A random permutation of the training rows (``torch.Generator`` seeded with
    ``seed``) gives the first ``num_val`` rows to validation and the next
    ``num_train`` (all the rest by default) to training; ``num_test`` test
    rows are a random subset drawn the same way (all by default, in file order).
    The preprocessor is fitted on the training rows only. ``frames``: the
    (train, test) frames of :func:`adult_frames`, read from ``root`` if None.
    """
    check_int(num_val, "num_val", 0)
    check_int(seed, "seed", 0)
    if num_train is not None:
        check_positive_int(num_train, "num_train")
    if num_test is not None:
        check_positive_int(num_test, "num_test")
    train_frame, test_frame = adult_frames(root) if frames is None else frames
    if num_val >= len(train_frame):
        raise ValueError(f"val_size must be smaller than the training set ({len(train_frame)} rows), got {num_val}")
    order = torch.randperm(len(train_frame), generator=torch.Generator().manual_seed(seed)).numpy()
    val_rows, train_rows = order[:num_val], order[num_val:]
    if num_train is not None:
        train_rows = train_rows[:num_train]
    test_rows = np.arange(len(test_frame))
    if num_test is not None and num_test < len(test_frame):
        test_rows = torch.randperm(len(test_frame), generator=torch.Generator().manual_seed(seed))[:num_test].numpy()
    fit_rows = train_frame.iloc[train_rows]
    if fit_rows["income"].nunique() < 2:
        raise ValueError(f"the {len(train_rows)} Adult training rows hold one class only; use more training rows")
    transformer = adult_preprocessor().fit(fit_rows)
    width = len(transformer.get_feature_names_out())

    def features(frame) -> np.ndarray:
        if len(frame) == 0:  # no validation rows: scikit-learn refuses empty inputs
            return np.zeros((0, width), dtype=np.float32)
        return np.ascontiguousarray(transformer.transform(frame), dtype=np.float32)

    val_frame, test_part = train_frame.iloc[val_rows], test_frame.iloc[test_rows]
    return AdultArrays(features(fit_rows), _labels(fit_rows), features(val_frame), _labels(val_frame),
                       features(test_part), _labels(test_part), train_rows, val_rows, test_rows, transformer)


def adult(root, *, num_train: Optional[int] = None, num_test: Optional[int] = None, num_val: int = 0, seed: int = 0,
          download: bool = False) -> Splits:
    """UCI Adult from the CSVs under ``root``: rows of F float features, 2 classes (income > $50K).

    ``num_val`` training rows, drawn with ``seed``, are held out for
    validation; ``num_train``/``num_test`` take subsets (all rows by default).
    The imputation, standardisation and one-hot encoding are fitted on the
    training rows only (see :func:`adult_arrays`). ``download=True`` first
    fetches the UCI files into ``root`` if they are missing.

    Returns ``Splits`` of ``TensorDataset(features (N, F) float32, labels (N,) int64)``
    with ``input_shape=(F,)``, ``num_classes=2`` and no normalisation statistics
    (the inputs are used as they are).
    """
    if download and not (_data_root(root) / ADULT_FILES["train"]).is_file():
        download_adult(root)
    arrays = adult_arrays(root, num_train=num_train, num_test=num_test, num_val=num_val, seed=seed)
    data_root = _data_root(root)
    digest = fingerprint("adult", [file_entry(name, read_file(data_root / name, "CSV file"))
                                   for name in sorted(ADULT_FILES.values())])
    as_dataset = lambda x, y: TensorDataset(torch.from_numpy(x), torch.from_numpy(y))  # noqa: E731
    val = as_dataset(arrays.x_val, arrays.y_val) if num_val > 0 else None
    return Splits(as_dataset(arrays.x_train, arrays.y_train), val, as_dataset(arrays.x_test, arrays.y_test),
                  (arrays.x_train.shape[1],), len(ADULT_LABELS), fingerprint=digest)


def load_adult(name: str, *, data_dir: Optional[str], num_train: Optional[int], num_test: Optional[int],
               num_val: int, download: bool = False, seed: int = 0, **unused) -> Splits:
    """``load_dataset("adult", ...)``: :func:`adult` rooted at ``data_dir`` (default: the cache's ``adult/``).

    The image options (``augment``, ``image_size``) are not used.
    """
    root = Path(data_dir) if data_dir is not None else default_cache_dir() / "adult"
    return adult(root, num_train=num_train, num_test=num_test, num_val=num_val, seed=seed, download=download)
