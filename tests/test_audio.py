"""FSDD (spoken digits) from tiny synthetic WAV files, the log-mel features, and the speech CNN.

Nothing here reads the real data set or downloads: every test writes its own
``recordings/{digit}_{speaker}_{take}.wav`` files (short int16 tones at 8 kHz)
under ``tmp_path`` and caches features there.
"""

import re

import numpy as np
import pytest
import torch

import multimix
import multimix.data as data_package
import multimix.models as models_package
from multimix.data import audio
from multimix.data.audio import (NUM_SAMPLES, fix_length, fsdd, hz_to_mel, list_recordings, load_fsdd, log_mel,
                                 mel_filterbank, mel_to_hz, read_wav, speakers)
from multimix.models.speech_cnn import SpeechCNN, speech_cnn

wavfile = pytest.importorskip("scipy.io.wavfile")

SPEAKERS = ("alice", "bob")
DIGITS = (0, 1, 2)
TAKES = range(8)  # takes 0-4: official test set; 5-7: training pool
SHAPE = (1, 40, 101)


def _tone(digit: int, take: int, speaker: int, rate: int = 8000) -> np.ndarray:
    """A short int16 tone whose pitch encodes the digit; its length varies (some longer than 1 s, cropped)."""
    length = 2400 + 900 * take + 300 * speaker  # 0.3 s ... 1.2 s
    t = np.arange(length) / rate
    freq = 300.0 * (digit + 1) + 40.0 * speaker + 5.0 * take
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) * 40)
    return (0.4 * envelope * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def _write(path, digit=0, take=0, speaker=0, rate=8000, data=None):
    wavfile.write(path, rate, _tone(digit, take, speaker, rate) if data is None else data)
    return path


@pytest.fixture
def fsdd_root(tmp_path):
    """``tmp_path/fsdd/recordings/`` with 2 speakers × 3 digits × 8 takes (48 files)."""
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for s, speaker in enumerate(SPEAKERS):
        for digit in DIGITS:
            for take in TAKES:
                _write(folder / f"{digit}_{speaker}_{take}.wav", digit, take, s)
    return tmp_path / "fsdd"


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _take(name: str) -> int:
    return int(name[:-4].split("_")[2])


def _speaker(name: str) -> str:
    return name.split("_")[1]


# ------------------------------------------------------------------ splits and features

def test_official_split_puts_takes_0_to_4_in_test(fsdd_root, cache):
    splits = fsdd(fsdd_root, cache_dir=cache)
    assert splits.input_shape == SHAPE and splits.num_classes == 10 and splits.val is None
    x, y = splits.train.tensors
    assert x.shape == (2 * 3 * 3, *SHAPE) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(splits.test) == 2 * 3 * 5
    assert all(_take(f) <= 4 for f in splits.test.files)
    assert all(_take(f) >= 5 for f in splits.train.files)
    assert sorted(splits.train.files + splits.test.files) == sorted(r.path.name for r in list_recordings(fsdd_root))
    assert [int(f[0]) for f in splits.test.files] == splits.test.tensors[1].tolist()  # the label is the digit


def test_validation_is_held_out_of_training_by_seed(fsdd_root, cache):
    a = fsdd(fsdd_root, num_val=5, seed=0, cache_dir=cache)
    b = fsdd(fsdd_root, num_val=5, seed=0, cache_dir=cache)
    c = fsdd(fsdd_root, num_val=5, seed=1, cache_dir=cache)
    assert len(a.val) == 5 and len(a.train) == 13
    assert not set(a.val.files) & set(a.train.files) and all(_take(f) >= 5 for f in a.val.files)
    assert a.val.files == b.val.files and a.val.files != c.val.files
    with pytest.raises(ValueError, match="val_size"):
        fsdd(fsdd_root, num_val=18, cache_dir=cache)


def test_subsets_of_train_and_test(fsdd_root, cache):
    splits = fsdd(fsdd_root, num_train=7, num_test=11, num_val=2, cache_dir=cache)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 2, 11)
    assert all(_take(f) <= 4 for f in splits.test.files)
    x = splits.train.tensors[0]  # statistics of the 7 recordings used
    assert torch.allclose(x.mean(dim=(0, 1, 3)), torch.zeros(40), atol=1e-4)


def test_leave_one_speaker_out(fsdd_root, cache):
    splits = fsdd(fsdd_root, test_speaker="bob", num_val=4, cache_dir=cache)
    assert len(splits.test) == 3 * 8 and {_speaker(f) for f in splits.test.files} == {"bob"}
    assert {_speaker(f) for f in splits.train.files + splits.val.files} == {"alice"}
    assert len(splits.train) + len(splits.val) == 3 * 8
    named = load_fsdd("fsdd:loso=alice", data_dir=str(fsdd_root), num_train=None, num_test=None, num_val=0)
    assert {_speaker(f) for f in named.test.files} == {"alice"}


@pytest.fixture
def three_speakers(fsdd_root):
    """``fsdd_root`` plus a third speaker, carol (24 more files)."""
    for digit in DIGITS:
        for take in TAKES:
            _write(fsdd_root / "recordings" / f"{digit}_carol_{take}.wav", digit, take, 2)
    return fsdd_root


def test_a_held_out_validation_speaker(three_speakers, cache):
    """``loso=bob,val=carol``: carol's recordings are the validation set, bob's the test set, alice's train; the
    standardisation uses alice's recordings only."""
    splits = load_fsdd("fsdd:loso=bob, val=carol", data_dir=str(three_speakers), num_train=None, num_test=None,
                       num_val=0)
    assert {_speaker(f) for f in splits.train.files} == {"alice"} and len(splits.train) == 24
    assert {_speaker(f) for f in splits.val.files} == {"carol"} and len(splits.val) == 24
    assert {_speaker(f) for f in splits.test.files} == {"bob"} and len(splits.test) == 24
    alone = fsdd(three_speakers, test_speaker="carol", num_val=0, cache_dir=cache)  # trains on alice and bob
    assert not np.allclose(alone.train.mel_mean, splits.train.mel_mean)
    x = splits.train.tensors[0]
    assert torch.allclose(x.mean(dim=(0, 1, 3)), torch.zeros(40), atol=1e-4)
    some = fsdd(three_speakers, test_speaker="bob", val_speaker="carol", num_val=5, seed=1, cache_dir=cache)
    assert len(some.val) == 5 and set(some.val.files) < set(splits.val.files) and len(some.train) == 24


def test_bad_validation_speakers_are_refused(three_speakers, cache):
    with pytest.raises(ValueError, match=r"validation speaker 'dave'.*alice, bob, carol"):
        fsdd(three_speakers, test_speaker="bob", val_speaker="dave", cache_dir=cache)
    with pytest.raises(ValueError, match="must differ from the test speaker"):
        fsdd(three_speakers, test_speaker="bob", val_speaker="bob", cache_dir=cache)
    with pytest.raises(ValueError, match="needs a test_speaker"):
        fsdd(three_speakers, val_speaker="bob", cache_dir=cache)
    for name in ("fsdd:loso=bob,val=", "fsdd:loso=bob,speaker=carol", "fsdd:val=carol"):
        with pytest.raises(ValueError, match=r"loso=<speaker>,val=<speaker>"):
            load_fsdd(name, data_dir=str(three_speakers), num_train=None, num_test=None, num_val=0)


def test_two_speakers_held_out_of_two_leave_no_training_speaker(fsdd_root, cache):
    with pytest.raises(ValueError, match="leaves no training speaker"):
        fsdd(fsdd_root, test_speaker="bob", val_speaker="alice", cache_dir=cache)


def test_unknown_speaker_and_protocol(fsdd_root, cache):
    with pytest.raises(ValueError, match=r"'carol'.*alice, bob"):
        fsdd(fsdd_root, test_speaker="carol", cache_dir=cache)
    with pytest.raises(ValueError, match=r"'carol'.*alice, bob"):
        load_fsdd("fsdd:loso=carol", data_dir=str(fsdd_root), num_train=None, num_test=None, num_val=0)
    with pytest.raises(ValueError, match="fsdd:loso=<speaker>"):
        load_fsdd("fsdd:speaker=bob", data_dir=str(fsdd_root), num_train=None, num_test=None, num_val=0)
    assert speakers(fsdd_root) == ["alice", "bob"] == speakers(fsdd_root / "recordings")


def test_standardisation_uses_training_statistics_only(fsdd_root, cache):
    splits = fsdd(fsdd_root, num_val=3, cache_dir=cache)
    x = splits.train.tensors[0]
    assert torch.allclose(x.mean(dim=(0, 1, 3)), torch.zeros(40), atol=1e-4)  # per mel band
    assert torch.allclose(x.std(dim=(0, 1, 3), unbiased=False), torch.ones(40), atol=1e-3)

    def raw(names):
        waves = np.stack([fix_length(read_wav(fsdd_root / "recordings" / n)) for n in names])
        return log_mel(torch.from_numpy(waves)).double().numpy()

    train_raw = raw(splits.train.files)
    mean, std = train_raw.mean(axis=(0, 2)), train_raw.std(axis=(0, 2))
    np.testing.assert_allclose(splits.train.mel_mean, mean, rtol=1e-5, atol=1e-5)
    expected_test = (raw(splits.test.files) - mean[None, :, None]) / std[None, :, None]
    np.testing.assert_allclose(splits.test.tensors[0][:, 0].numpy(), expected_test, atol=1e-3)
    np.testing.assert_allclose(splits.val.mel_std, splits.train.mel_std)


def test_the_global_rng_is_left_alone(fsdd_root, cache):
    state = torch.get_rng_state()
    fsdd(fsdd_root, num_val=3, num_train=5, num_test=7, cache_dir=cache)
    assert torch.equal(state, torch.get_rng_state())


def test_features_are_cached_and_recomputed_when_a_file_changes(fsdd_root, cache, monkeypatch):
    first = fsdd(fsdd_root, cache_dir=cache)
    assert len(list(cache.glob("fsdd-logmel-*.npz"))) == 1 and not list(cache.glob("*.tmp*"))

    def no_recompute(waves):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(audio, "log_mel", no_recompute)
    again = fsdd(fsdd_root, test_speaker="alice", cache_dir=cache)  # another protocol, the same cached features
    assert len(again.test) == 24
    assert torch.equal(fsdd(fsdd_root, cache_dir=cache).test.tensors[0], first.test.tensors[0])

    changed = fsdd_root / "recordings" / "1_bob_2.wav"
    _write(changed, digit=2, take=7, speaker=0)  # other content and length
    with pytest.raises(AssertionError, match="recomputed"):
        fsdd(fsdd_root, cache_dir=cache)
    monkeypatch.undo()
    after = fsdd(fsdd_root, cache_dir=cache)
    i = after.test.files.index("1_bob_2.wav")
    assert not torch.allclose(after.test.tensors[0][i], first.test.tensors[0][i])
    assert len(list(cache.glob("fsdd-logmel-*.npz"))) == 2


def test_load_fsdd_takes_the_registry_arguments_and_the_default_cache(fsdd_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIMIX_CACHE", str(tmp_path / "default-cache"))
    splits = load_fsdd("fsdd", data_dir=str(fsdd_root / "recordings"), num_train=None, num_test=5, num_val=2,
                       download=False, augment=True, image_size=32, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 2, 5)
    assert list((tmp_path / "default-cache" / "fsdd").glob("fsdd-logmel-*.npz"))
    # Without data_dir the recordings are looked for in default_cache_dir() / "fsdd".
    monkeypatch.setenv("MULTIMIX_CACHE", str(fsdd_root.parent))
    assert len(load_fsdd("fsdd", data_dir=None, num_train=None, num_test=None, num_val=0).test) == 30


def test_trainer_runs_on_fsdd(fsdd_root, tmp_path, monkeypatch):
    """The loader and the model registered by name, as the shared registries will hold them."""
    monkeypatch.setitem(data_package._LOADERS, "fsdd", load_fsdd)
    monkeypatch.setattr(data_package, "DATASETS", tuple(data_package._LOADERS))
    monkeypatch.setitem(models_package.MODELS, "speech_cnn", speech_cnn)
    monkeypatch.setenv("MULTIMIX_CACHE", str(tmp_path / "cache"))
    from multimix.engine import TrainConfig, Trainer

    config = TrainConfig(dataset="fsdd:loso=bob", data_dir=str(fsdd_root), model="speech_cnn", width=4,
                         method="dense_multimix", method_args={"n": 16}, val_size=4, epochs=1, batch_size=8,
                         progress=False, checkpoint=False, out_dir=str(tmp_path / "run"))
    summary = Trainer(config).run()
    assert summary["status"] == "completed" and 0 <= summary["final"]["test_accuracy"] <= 100


# ------------------------------------------------------------------ bad input

def test_wrong_sample_rate_names_the_file(fsdd_root, cache):
    bad = _write(fsdd_root / "recordings" / "2_alice_6.wav", rate=16000)
    with pytest.raises(ValueError, match=r"2_alice_6\.wav.*16000 Hz.*8000"):
        read_wav(bad)
    with pytest.raises(ValueError, match=r"2_alice_6\.wav.*16000"):
        fsdd(fsdd_root, cache_dir=cache)


def test_truncated_or_corrupted_wav_names_the_file(tmp_path):
    good = _write(tmp_path / "0_x_0.wav").read_bytes()
    truncated = tmp_path / "0_x_1.wav"
    truncated.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match=r"0_x_1\.wav.*truncated"):
        read_wav(truncated)
    header_only = tmp_path / "0_x_2.wav"
    header_only.write_bytes(good[:30])
    with pytest.raises(ValueError, match=r"0_x_2\.wav"):
        read_wav(header_only)
    garbage = tmp_path / "0_x_3.wav"
    garbage.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match=r"0_x_3\.wav.*not a readable WAV"):
        read_wav(garbage)


@pytest.mark.parametrize("value, dtype, expected", [
    (np.nan, np.float32, "is not finite (nan)"),
    (-np.inf, np.float32, "is not finite (-inf)"),
    (3e7, np.float32, "is 3e+07, beyond the ±1e+06 accepted (a corrupt value?)"),
    (1e300, np.float64, "is 1e+300, beyond the ±1e+06 accepted (a corrupt value?)"),  # inf once made float32
])
def test_non_finite_or_absurd_samples_are_refused_naming_file_and_sample(fsdd_root, cache, value, dtype, expected):
    wave = (_tone(2, 6, 0) / 32768).astype(dtype)  # a float WAV (full scale 1)
    wave[:5] = [1.5, -1.5, 0.9, 1e-30, 0.0]  # a little beyond full scale is still audio
    assert np.array_equal(read_wav(_write(fsdd_root / "recordings" / "2_alice_6.wav", data=wave)),
                          wave.astype(np.float32))
    wave[1234] = value
    bad = _write(fsdd_root / "recordings" / "2_alice_6.wav", data=wave)
    with pytest.raises(ValueError) as err:
        fsdd(fsdd_root, cache_dir=cache)
    assert str(err.value) == f"{bad} sample 1234 {expected}"
    assert not list(cache.glob("*.npz"))  # refused before any features were cached


def test_a_cache_with_non_finite_features_is_computed_again(fsdd_root, cache):
    first = fsdd(fsdd_root, cache_dir=cache)
    [path] = cache.glob("fsdd-logmel-*.npz")
    with np.load(path) as stored:
        features, names = stored["features"], stored["names"]
    features[3, 5, 7] = np.nan
    np.savez(path, features=features, names=names)
    again = fsdd(fsdd_root, cache_dir=cache)
    assert torch.isfinite(again.train.tensors[0]).all() and torch.isfinite(again.test.tensors[0]).all()
    assert torch.equal(again.test.tensors[0], first.test.tensors[0])
    with np.load(path) as stored:
        assert np.isfinite(stored["features"]).all()  # replaced


def test_the_fingerprint_identifies_the_recordings(fsdd_root, cache, tmp_path):
    import shutil

    first = fsdd(fsdd_root, cache_dir=cache).fingerprint
    assert len(first) == 16
    assert fsdd(fsdd_root / "recordings", test_speaker="bob", num_val=2, cache_dir=cache).fingerprint == first
    copy = tmp_path / "copy"
    shutil.copytree(fsdd_root, copy)
    assert fsdd(copy, cache_dir=cache).fingerprint == first  # the same files elsewhere
    data = bytearray((copy / "recordings" / "1_bob_7.wav").read_bytes())
    data[-1] ^= 1  # one bit of one sample: the same size, name and feature cache key length
    (copy / "recordings" / "1_bob_7.wav").write_bytes(bytes(data))
    assert fsdd(copy, cache_dir=cache).fingerprint != first
    (copy / "recordings" / "1_bob_7.wav").rename(copy / "recordings" / "1_bob_8.wav")
    assert fsdd(copy, cache_dir=cache).fingerprint != first


def test_stereo_file_names_the_file(tmp_path):
    stereo = _write(tmp_path / "0_x_0.wav", data=np.stack([_tone(0, 0, 0)] * 2, axis=1))
    with pytest.raises(ValueError, match=r"0_x_0\.wav.*2 channels"):
        read_wav(stereo)
    mono_column = _write(tmp_path / "0_x_1.wav", data=_tone(0, 0, 0)[:, None])
    assert read_wav(mono_column).shape == (2400,)


def test_wrong_layout_names_the_directory(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match=r"(?s)" + re.escape(str(where)) +
                           r".*recordings/\{digit\}_\{speaker\}_\{take\}\.wav"):
            fsdd(where, cache_dir=cache)
    folder = tmp_path / "named" / "recordings"
    folder.mkdir(parents=True)
    _write(folder / "0_alice_0.wav")
    _write(folder / "alice-zero.wav")
    with pytest.raises(ValueError, match=r"alice-zero\.wav.*\{digit\}_\{speaker\}_\{take\}\.wav"):
        fsdd(tmp_path / "named", cache_dir=cache)


# ------------------------------------------------------------------ features

def test_wav_scaling_and_fixed_length(tmp_path):
    path = _write(tmp_path / "0_x_0.wav", data=np.array([16384, -32768, 0, 8192], dtype=np.int16))
    wave = read_wav(path)
    assert wave.dtype == np.float32 and wave.tolist() == [0.5, -1.0, 0.0, 0.25]
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(wave, 4), [3, 4, 5, 6])  # centre crop
    np.testing.assert_array_equal(fix_length(wave[:3], 6), [0, 0, 1, 2, 0, 0])  # zeros on both sides
    assert fix_length(np.ones(5, np.float32), 8).tolist() == [0, 1, 1, 1, 1, 1, 0, 0]
    assert log_mel(torch.zeros(2, NUM_SAMPLES)).shape == (2, 40, 101)


def test_mel_filterbank_is_slaney():
    bank = mel_filterbank()  # (40, 129): 8 kHz, n_fft 256
    assert bank.shape == (40, 129) and bank.dtype == np.float32 and (bank >= 0).all()
    assert hz_to_mel(1000.0) == pytest.approx(15.0) and hz_to_mel(200 / 3) == pytest.approx(1.0)
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 2500.0, 4000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)
    freqs = np.linspace(0, 4000, 129)
    bin_width = freqs[1]
    edges = mel_to_hz(np.linspace(0, hz_to_mel(4000.0), 42))
    for i, row in enumerate(bank):
        support = np.flatnonzero(row)
        assert len(support) >= 2 and np.all(np.diff(support) == 1)  # one contiguous piece
        peak = int(np.argmax(row))
        assert np.all(np.diff(row[support[0]:peak + 1]) >= 0) and np.all(np.diff(row[peak:support[-1] + 1]) <= 0)
        assert abs(freqs[peak] - edges[i + 1]) <= bin_width / 2 + 1e-9  # peak at the mel-spaced centre
        assert freqs[support[0]] > edges[i] - 1e-9 and freqs[support[-1]] < edges[i + 2] + 1e-9
        # Slaney norm: unit area in Hz, so the sampled row sums to about 1 / bin width = n_fft / sr.
        assert row.sum() == pytest.approx(256 / 8000, rel=0.1)
    np.testing.assert_allclose(bank.sum(1).mean(), 256 / 8000, rtol=0.02)


def test_mel_filterbank_and_log_mel_match_librosa():
    librosa = pytest.importorskip("librosa")
    np.testing.assert_allclose(mel_filterbank(), librosa.filters.mel(sr=8000, n_fft=256, n_mels=40), atol=1e-7)
    wave = fix_length(_tone(3, 2, 1).astype(np.float32) / 32768)
    reference = librosa.feature.melspectrogram(y=wave, sr=8000, n_fft=256, hop_length=80, n_mels=40, window="hann",
                                               center=True, pad_mode="constant", power=2.0)
    ours = log_mel(torch.from_numpy(wave)[None])[0].numpy()
    np.testing.assert_allclose(ours, np.log(reference + 1e-6), atol=1e-3)


# ------------------------------------------------------------------ the model

def test_speech_cnn_keeps_time_in_its_dense_features():
    model = speech_cnn(width=8).eval()
    assert isinstance(model, SpeechCNN) and model.num_stages == 4
    x = torch.randn(3, *SHAPE)
    z = model.encode(x)
    assert z.shape == (3, 32, 13)  # (m, 4·width, ⌈101 / 8⌉ time frames)
    torch.testing.assert_close(model(x), model.head(model.pool(z)))
    torch.testing.assert_close(model.pool(z), z.mean(dim=2))
    torch.testing.assert_close(model.encode(model.encode(x, 0, 1), 1), z)
    assert model.encode(torch.randn(2, 1, 40, 61)).shape == (2, 32, 8)  # any length: ⌈T / 8⌉ frames
    models_package.check_input_shape(model, "speech_cnn", SHAPE)
    assert speech_cnn(num_classes=5, width=4, in_channels=2)(torch.randn(2, 2, 40, 101)).shape == (2, 5)
    with pytest.raises(ValueError, match="width"):
        speech_cnn(width=0)


@pytest.mark.parametrize("name, kwargs", [("dense_multimix", {"n": 32}), ("multimix", {"n": 32}), ("cutmix", {}),
                                          ("manifold_mixup", {"layers": [0, 2, 4]}), ("erm", {})])
def test_methods_train_the_speech_cnn(name, kwargs):
    model = speech_cnn(width=4)
    method = multimix.create_method(name, num_classes=10, generator=torch.Generator().manual_seed(0), **kwargs)
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    loss = method(model, x, y)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
