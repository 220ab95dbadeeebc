"""The Free Spoken Digit Dataset (FSDD) as log-mel spectrograms: :func:`fsdd`, :func:`load_fsdd`, :func:`speakers`.

FSDD (Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset) holds
mono 8 kHz WAV files ``recordings/{digit}_{speaker}_{take}.wav``: 6 speakers ×
10 digits × 50 takes. Two protocols:

* ``"fsdd"`` — the official split: takes 0–4 of every speaker and digit are
  the test set (300 recordings), the rest train (2,700);
* ``"fsdd:loso=<speaker>"`` — leave one speaker out: that speaker's
  recordings (500) are the test set, the other speakers' train.

Validation (``num_val``) is held out from the training recordings by ``seed``,
or, with ``"fsdd:loso=<speaker>,val=<speaker>"``, is a second held-out
speaker's recordings (an unseen voice, like the test set).

Each recording is read with :mod:`scipy.io.wavfile`, scaled to [-1, 1], cut
or zero-padded to 1 s (8,000 samples, centred) and turned into a log-mel
spectrogram: ``torch.stft`` with a 256-point Hann window and a hop of 80
samples (101 frames), the power spectrum through a 40-band Slaney mel
filterbank (:func:`mel_filterbank`, the same as ``librosa.filters.mel``), then
``log(mel + 1e-6)``. Inputs are (1, 40, 101) float32, standardised **per mel
band** with the mean and standard deviation of the training examples used
(over examples and frames), so the training inputs have mean 0 and standard
deviation 1 in every band; validation and test use the same statistics.
``Splits.mean``/``std`` stay ``None`` (as for MNIST-1D): the inputs have no
pixel range for the attacks to clamp to.

The unstandardised features of all recordings are computed once and cached as
``fsdd-logmel-<key>.npz`` in ``default_cache_dir() / "fsdd"`` (written
atomically); the key hashes the file names, sizes and modification times and
the feature parameters, so changing, adding or removing a recording computes
them again. A cache that cannot be read, or holds non-finite features, is
computed again and replaced.

The files are untrusted: a WAV file whose samples (after the scaling to full
scale 1) are not finite or exceed ±:data:`~multimix.data.splits.MAX_MAGNITUDE`
(float WAVs can hold NaN, inf or any value) is refused when read, naming the
file and the sample. ``Splits.fingerprint`` hashes every recording's name,
size and content.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .splits import Splits, check_values, default_cache_dir, file_entry, fingerprint, read_file, take

__all__ = ["SAMPLE_RATE", "NUM_SAMPLES", "N_FFT", "HOP_LENGTH", "N_MELS", "LOG_OFFSET", "FSDD_URL", "Recording",
           "read_wav", "fix_length", "hz_to_mel", "mel_to_hz", "mel_filterbank", "log_mel", "recordings_dir",
           "list_recordings", "speakers", "fsdd_features", "fsdd", "load_fsdd", "download_fsdd"]

SAMPLE_RATE = 8000  # Hz, every FSDD recording
NUM_SAMPLES = 8000  # 1 s: longer recordings are centre-cropped, shorter ones zero-padded on both sides
N_FFT = 256
HOP_LENGTH = 80
N_MELS = 40
LOG_OFFSET = 1e-6
FEATURE_VERSION = 2  # bump when the feature computation changes: old caches are then ignored (2: samples checked)
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
LAYOUT = "recordings/{digit}_{speaker}_{take}.wav"
_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_wav(path: Union[str, os.PathLike], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The samples of a mono WAV file as float32 in [-1, 1], shape (L,).

    Raises ``ValueError`` naming the file when it is not a readable WAV file
    (corrupted, truncated, larger than :data:`~multimix.data.splits.MAX_FILE_BYTES`),
    has another sample rate than ``sample_rate``, has more than one channel,
    holds no samples, or holds a sample (of a float WAV) that is not finite or
    beyond ±:data:`~multimix.data.splits.MAX_MAGNITUDE` (naming the sample).
    """
    from scipy.io import wavfile

    path = Path(path)
    content = io.BytesIO(read_file(path, "WAV file"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(content)
    except (ValueError, EOFError, struct.error, IndexError, KeyError, TypeError, OverflowError) as err:
        raise ValueError(f"{path}: not a readable WAV file ({err})") from err
    for warning in caught:
        if "EOF" in str(warning.message):  # scipy reads what is there of a truncated data chunk, with a warning
            raise ValueError(f"{path}: truncated WAV file ({warning.message})")
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if data.ndim != 1:
        channels = data.shape[1] if data.ndim == 2 else "?"
        if data.ndim != 2 or channels != 1:
            raise ValueError(f"{path}: {channels} channels, expected a mono (1-channel) recording")
        data = data[:, 0]
    if data.size == 0:
        raise ValueError(f"{path}: the WAV file holds no samples")
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0)
    if np.issubdtype(data.dtype, np.integer):  # int16, int32 (24-bit files are read left-justified into int32)
        return (data.astype(np.float32) / float(-np.iinfo(data.dtype).min))
    check_values(data, lambda i: f"{path} sample {i[0]}")  # before float32, where 1e300 would become inf
    return data.astype(np.float32)


def fix_length(wave: np.ndarray, length: int = NUM_SAMPLES) -> np.ndarray:
    """``wave`` (L,) centre-cropped or zero-padded (equally on both sides, the extra sample at the end) to ``length``."""
    n = len(wave)
    if n >= length:
        start = (n - length) // 2
        return wave[start:start + length]
    before = (length - n) // 2
    return np.pad(wave, (before, length - n - before))


# ---------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------


_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (Slaney's auditory toolbox)
_MIN_LOG_HZ, _MIN_LOG_MEL = 1000.0, 15.0
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, mel)


def mel_to_hz(mel) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = 0.0,
                   fmax: Optional[float] = None) -> np.ndarray:
    """Slaney-style mel filterbank (n_mels, 1 + n_fft // 2), as ``librosa.filters.mel(..., norm="slaney")``.

    Row i is a triangle over the FFT bin frequencies rising from mel centre
    f_i to f_{i+1} and falling to f_{i+2} (n_mels + 2 points equally spaced on
    the mel scale between ``fmin`` and ``fmax``), scaled by 2 / (f_{i+2} − f_i)
    so that every triangle has unit area in Hz: each row sums to about
    n_fft / sample_rate.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,)
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(waves: torch.Tensor) -> torch.Tensor:
    """Log-mel spectrograms (N, N_MELS, 1 + L // HOP_LENGTH) of waveforms (N, L).

    ``torch.stft`` (Hann window of N_FFT, hop HOP_LENGTH, centred frames with
    zero padding), power spectrum, :func:`mel_filterbank`, ``log(· + 1e-6)``.
    """
    window = torch.hann_window(N_FFT, dtype=waves.dtype, device=waves.device)
    spectrum = torch.stft(waves, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="constant",
                          return_complex=True)
    power = spectrum.real ** 2 + spectrum.imag ** 2  # (N, 1 + N_FFT // 2, T)
    bank = torch.from_numpy(mel_filterbank()).to(device=waves.device, dtype=waves.dtype)
    return torch.log(torch.einsum("mf,nft->nmt", bank, power) + LOG_OFFSET)


# ---------------------------------------------------------------------------
# the files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One FSDD file: its path, the spoken digit (the label), the speaker and the take."""

    path: Path
    digit: int
    speaker: str
    take: int


def recordings_dir(data_dir: Union[str, os.PathLike]) -> Path:
    """The folder holding the WAV files: ``data_dir/recordings`` or ``data_dir`` itself.

    Raises ``FileNotFoundError`` naming ``data_dir`` and the expected layout when neither holds FSDD recordings.
    """
    root = Path(data_dir)
    for candidate in (root / "recordings", root):
        if candidate.is_dir() and any(_NAME.match(p.name) for p in candidate.iterdir()):
            return candidate
    what = "does not exist" if not root.exists() else "has no FSDD recordings"
    raise FileNotFoundError(f"FSDD data directory {root} {what}: expected {root}/{LAYOUT} (e.g. "
                            f"{root}/recordings/0_jackson_0.wav), or the WAV files directly in {root}; pass "
                            "download=True (--download) to fetch them")


def list_recordings(data_dir: Union[str, os.PathLike]) -> List[Recording]:
    """Every recording under ``data_dir`` (see :func:`recordings_dir`), sorted by file name.

    A ``.wav`` file whose name is not ``{digit}_{speaker}_{take}.wav`` raises ``ValueError`` naming it.
    """
    folder = recordings_dir(data_dir)
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".wav":
            continue
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: FSDD file names must be {{digit}}_{{speaker}}_{{take}}.wav "
                             f"(e.g. 3_theo_12.wav)")
        out.append(Recording(path, int(match.group(1)), match.group(2), int(match.group(3))))
    return out


def speakers(root: Union[str, os.PathLike]) -> List[str]:
    """The speakers found under ``root`` (a folder holding ``recordings/`` or the WAV files), sorted."""
    return sorted({r.speaker for r in list_recordings(root)})


def download_fsdd(data_dir: Union[str, os.PathLike], url: str = FSDD_URL) -> Path:
    """Fetch the official repository's master-branch archive and put its WAV files in ``data_dir/recordings``.

    The files are extracted to a temporary folder beside it and moved into
    place in one rename, so an interrupted download leaves no partial folder.
    """
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / "recordings"
    with tempfile.TemporaryDirectory(dir=root, prefix=".fsdd-download-") as tmp:
        archive = Path(tmp) / "fsdd.zip"
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        staged = Path(tmp) / "recordings"
        staged.mkdir()
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = member.split("/")
                name = parts[-1]
                if len(parts) >= 2 and parts[-2] == "recordings" and _NAME.match(name):
                    (staged / name).write_bytes(zf.read(member))  # the base name only: nothing escapes `staged`
        if not any(staged.iterdir()):
            raise FileNotFoundError(f"the archive from {url} holds no {LAYOUT} files")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


# ---------------------------------------------------------------------------
# cached features
# ---------------------------------------------------------------------------


def _feature_params() -> dict:
    return {"version": FEATURE_VERSION, "sample_rate": SAMPLE_RATE, "num_samples": NUM_SAMPLES, "n_fft": N_FFT,
            "hop_length": HOP_LENGTH, "n_mels": N_MELS, "log_offset": LOG_OFFSET, "window": "hann",
            "mel": "slaney", "pad": "centre"}


def _cache_key(recordings: Sequence[Recording]) -> str:
    files = []
    for r in recordings:
        stat = r.path.stat()
        files.append([r.path.name, stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"files": files, "params": _feature_params()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _compute_features(recordings: Sequence[Recording], chunk: int = 500) -> np.ndarray:
    waves = np.stack([fix_length(read_wav(r.path)) for r in recordings])  # every file is checked before any work
    parts = [log_mel(torch.from_numpy(waves[i:i + chunk])) for i in range(0, len(waves), chunk)]
    return torch.cat(parts).numpy().astype(np.float32)


def fsdd_features(recordings: Sequence[Recording], cache_dir: Optional[Union[str, os.PathLike]] = None) -> np.ndarray:
    """Unstandardised log-mel features (N, N_MELS, T) of ``recordings``, from the cache or computed and cached."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "fsdd"
    path = cache_dir / f"fsdd-logmel-{_cache_key(recordings)}.npz"
    names = np.array([r.path.name for r in recordings])
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                features = cached["features"]
                if np.array_equal(cached["names"], names) and np.isfinite(features).all():
                    return features
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # an unreadable cache is computed again and replaced
    features = _compute_features(recordings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, features=features, names=names)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return features


# ---------------------------------------------------------------------------
# the splits
# ---------------------------------------------------------------------------


def _standardise(features: np.ndarray, train_index: Sequence[int]) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(features − mean) / std per mel band, with mean and std over the training examples and frames."""
    train = features[np.asarray(train_index)].astype(np.float64)
    mean = train.mean(axis=(0, 2))  # (n_mels,)
    std = np.maximum(train.std(axis=(0, 2)), 1e-8)
    x = (features - mean[None, :, None]) / std[None, :, None]
    return torch.from_numpy(x.astype(np.float32)).unsqueeze(1), mean, std


def fsdd(data_dir: Optional[Union[str, os.PathLike]] = None, *, test_speaker: Optional[str] = None,
         num_train: Optional[int] = None, num_test: Optional[int] = None, num_val: int = 0, seed: int = 0,
         download: bool = False, cache_dir: Optional[Union[str, os.PathLike]] = None,
         val_speaker: Optional[str] = None) -> Splits:
    """FSDD as standardised log-mel spectrograms (1, 40, 101), 10 classes (the digits).

    Args:
        data_dir: a folder holding ``recordings/`` (or the WAV files); default
            ``default_cache_dir() / "fsdd"``.
        test_speaker: None for the official split (takes 0–4 are the test
            set); a speaker's name for leave-one-speaker-out (all of that
            speaker's recordings are the test set, nobody else's).
        num_train: training recordings used (default: all that remain after
            validation), drawn by ``seed``.
        num_test: test recordings used (default all), drawn by ``seed``.
        num_val: training recordings held out for validation, drawn by ``seed``;
            with ``val_speaker``, how many of that speaker's recordings (0 = all).
        download: fetch the recordings (:func:`download_fsdd`) when ``data_dir`` has none.
        cache_dir: where the features are cached (default ``default_cache_dir() / "fsdd"``).
        val_speaker: with ``test_speaker``, a second speaker held out of training whose recordings are the
            validation set: validation then measures an unseen voice, as the test does (recordings of the
            training speakers are almost all recognised, so they cannot rank settings for unseen ones).

    The training statistics (per mel band) are those of the ``num_train``
    training recordings actually used; the torch global RNG is not touched.
    Each returned data set is a ``TensorDataset`` of (x (1, 40, 101), digit)
    with two extra attributes: ``files``, the recording of each example
    (file names), and ``mel_mean``/``mel_std``, the training statistics
    (n_mels,) applied to every split. The fingerprint hashes every
    recording's file name, size and content.
    """
    if val_speaker is not None and test_speaker is None:
        raise ValueError(f"val_speaker {val_speaker!r} needs a test_speaker (leave one speaker out): "
                         "use 'fsdd:loso=<speaker>,val=<speaker>'")
    if val_speaker is not None and val_speaker == test_speaker:
        raise ValueError(f"the validation speaker must differ from the test speaker, got {val_speaker!r} for both")
    if num_val < 0:
        raise ValueError(f"num_val must be >= 0, got {num_val}")
    root = Path(data_dir) if data_dir is not None else default_cache_dir() / "fsdd"
    if download:
        try:
            recordings_dir(root)
        except FileNotFoundError:
            download_fsdd(root)
    recordings = list_recordings(root)
    found = sorted({r.speaker for r in recordings})
    for role, speaker in (("", test_speaker), ("validation ", val_speaker)):
        if speaker is not None and speaker not in found:
            raise ValueError(f"unknown FSDD {role}speaker {speaker!r}; speakers in {recordings_dir(root)}: "
                             f"{', '.join(found)}")
    if test_speaker is None:
        in_test = [r.take <= 4 for r in recordings]
    else:
        in_test = [r.speaker == test_speaker for r in recordings]
    in_val = [r.speaker == val_speaker for r in recordings]  # all False without a validation speaker
    train_pool = [i for i, (t, v) in enumerate(zip(in_test, in_val)) if not t and not v]
    test_index = [i for i, t in enumerate(in_test) if t]
    if val_speaker is not None and not train_pool:
        raise ValueError(f"FSDD under {recordings_dir(root)}: holding out {test_speaker!r} and {val_speaker!r} "
                         "leaves no training speaker")
    if not train_pool or not test_index:
        raise ValueError(f"FSDD under {recordings_dir(root)}: the split leaves {len(train_pool)} training and "
                         f"{len(test_index)} test recordings; both must be non-empty")
    if val_speaker is not None:  # the second held-out voice, all of it or num_val of its recordings
        val_index = [i for i, v in enumerate(in_val) if v]
        val_index = list(take(val_index, num_val or None, seed, "num_val"))
        return _splits(recordings, train_pool, val_index, test_index, num_train=num_train, num_test=num_test,
                       seed=seed, cache_dir=cache_dir)
    if num_val >= len(train_pool):
        raise ValueError(f"val_size must be smaller than the training set ({len(train_pool)} recordings), "
                         f"got {num_val}")
    order = torch.randperm(len(train_pool), generator=torch.Generator().manual_seed(seed)).tolist()
    val_index = [train_pool[i] for i in order[:num_val]]
    rest = [train_pool[i] for i in order[num_val:]]
    return _splits(recordings, rest, val_index, test_index, num_train=num_train, num_test=num_test, seed=seed,
                   cache_dir=cache_dir)


def _splits(recordings: List[Recording], train_pool: List[int], val_index: List[int], test_index: List[int], *,
            num_train, num_test, seed: int, cache_dir) -> Splits:
    """Train/validation/test data sets of log-mels standardised with the statistics of the training recordings."""
    train_index = list(take(train_pool, num_train, seed, "num_train"))  # a list is a data set of its indices
    test_index = list(take(test_index, num_test, seed, "num_test"))
    features = fsdd_features(recordings, cache_dir)
    x, mean, std = _standardise(features, train_index)
    digest = fingerprint("fsdd", [file_entry(r.path.name, read_file(r.path, "WAV file")) for r in recordings])
    y = torch.tensor([r.digit for r in recordings], dtype=torch.long)

    def subset(index: List[int]) -> TensorDataset:
        dataset = TensorDataset(x[index], y[index])
        dataset.files = [recordings[i].path.name for i in index]  # which recording each example is
        dataset.mel_mean, dataset.mel_std = mean, std  # the training statistics per mel band (n_mels,)
        return dataset

    return Splits(subset(train_index), subset(val_index) if val_index else None, subset(test_index),
                  tuple(x.shape[1:]), 10, fingerprint=digest)


def _parse_protocol(name: str) -> Tuple[Optional[str], Optional[str]]:
    """(test speaker, validation speaker) of ``"fsdd:loso=<speaker>[,val=<speaker>]"``, (None, None) for
    ``"fsdd"``; else ``ValueError``."""
    if name == "fsdd":
        return None, None
    argument = name.split(":", 1)[1] if ":" in name else ""
    parts = dict(part.partition("=")[::2] for part in argument.split(","))
    parts = {key.strip(): value.strip() for key, value in parts.items()}
    if not parts.get("loso") or set(parts) - {"loso", "val"} or ("val" in parts and not parts["val"]):
        raise ValueError(f"unknown FSDD protocol {name!r}: use 'fsdd' (official split, takes 0-4 are the test set), "
                         "'fsdd:loso=<speaker>' (leave one speaker out) or 'fsdd:loso=<speaker>,val=<speaker>' "
                         "(a second speaker held out as the validation set)")
    return parts["loso"], parts.get("val")


def load_fsdd(name: str, *, data_dir: Optional[str], num_train: Optional[int], num_test: Optional[int],
              num_val: int, download: bool = False, seed: int = 0, **unused) -> Splits:
    """``load_dataset("fsdd" | "fsdd:loso=<speaker>", ...)``: :func:`fsdd` (``augment`` and ``image_size`` are not used).

    Without ``data_dir`` the recordings are looked for in ``default_cache_dir() / "fsdd"``.
    """
    test_speaker, val_speaker = _parse_protocol(name)
    return fsdd(data_dir, test_speaker=test_speaker, val_speaker=val_speaker, num_train=num_train,
                num_test=num_test, num_val=num_val, seed=seed, download=download)
