"""``multimix eval`` works on a checkpoint of every data family that trains, and says in one line what does not apply.

Each case trains one tiny epoch through the command line on data written in its real format (the writers of
tests/test_tabular.py and tests/test_graph.py, WAV tones here, the ImageFolder fixture of conftest.py), then
evaluates its ``last.pt``.
"""

import json

import numpy as np
import pytest

from multimix.cli import main

wavfile = pytest.importorskip("scipy.io.wavfile")

ATTACK_KEYS = {"eps", "clean_error", "fgsm_error", "pgd_error"}
OOD_KEYS = {"msp_auroc", "msp_fpr95", "energy_auroc", "energy_fpr95"}


def write_fsdd(root):
    """``root/recordings/{digit}_{speaker}_{take}.wav``: 2 speakers × 3 digits × 6 takes of int16 tones at 8 kHz."""
    folder = root / "recordings"
    folder.mkdir(parents=True)
    for s, speaker in enumerate(("ann", "ben")):
        for digit in range(3):
            for take in range(6):
                t = np.arange(2400 + 400 * take) / 8000
                tone = 0.4 * np.sin(2 * np.pi * (300.0 * (digit + 1) + 40 * s + 5 * take) * t)
                wavfile.write(folder / f"{digit}_{speaker}_{take}.wav", 8000, (tone * 32767).astype(np.int16))
    return root


def family_args(family, tmp_path, image_folder):
    """(dataset name, train flags) of a tiny run of ``family``."""
    if family == "mnist1d":
        return "mnist1d", ["--dataset", "mnist1d", "--num-train", "192", "--num-test", "64", "--width", "8",
                           "--batch-size", "32"]
    if family == "images":
        return "imagefolder", ["--dataset", "imagefolder", "--data-dir", str(image_folder), "--image-size", "16",
                               "--model", "preact_resnet_small", "--width", "4", "--batch-size", "8"]
    if family == "adult":
        pytest.importorskip("pandas")
        pytest.importorskip("sklearn")
        from test_tabular import write_adult

        return "adult", ["--dataset", "adult", "--data-dir", str(write_adult(tmp_path / "adult")), "--model", "mlp",
                         "--width", "8", "--batch-size", "4"]
    if family == "fsdd":
        return "fsdd", ["--dataset", "fsdd", "--data-dir", str(write_fsdd(tmp_path / "fsdd")), "--model",
                        "speech_cnn", "--width", "4", "--batch-size", "4"]
    pytest.importorskip("torch_geometric")
    from test_graph import write_planetoid

    write_planetoid(tmp_path / "planetoid" / "Cora" / "raw")
    return "planetoid:Cora", ["--dataset", "planetoid:Cora", "--data-dir", str(tmp_path / "planetoid"), "--model",
                              "gcn", "--batch-size", "6", "--optimizer", "adam", "--lr", "0.01"]


@pytest.mark.parametrize("family,skipped", [
    ("mnist1d", {}),
    ("images", {}),
    ("fsdd", {}),
    ("adult", {"OOD detection on shuffled positions": "table rows have no positions to shuffle"}),
    ("planetoid", {"FGSM and PGD attacks": "node-index inputs have no values to perturb",
                   "OOD detection on shuffled positions": "node-index inputs have no positions to shuffle"}),
])
def test_eval_runs_on_every_family_and_names_what_does_not_apply(family, skipped, tmp_path, image_folder, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("MULTIMIX_CACHE", str(tmp_path / "cache"))  # FSDD's features are cached per test
    dataset, flags = family_args(family, tmp_path, image_folder)
    run = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "1", "--no-progress", "--device", "cpu", "--out-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--out-dir", str(tmp_path / "eval"), "--attack-limit", "8",
                 "--pgd-steps", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert 0 <= result["accuracy"] <= 100 and 0 <= result["ece"] <= 100 and "uniformity" in result
    assert result["skipped"] == skipped
    lines = [line for line in printed.out.splitlines() if line.startswith("eval: skipped")]
    if skipped:
        assert lines == [f"eval: skipped for {dataset}: "
                         + ", ".join(f"{name} ({why})" for name, why in skipped.items())]
    else:
        assert not lines
    attacked, ood = "FGSM and PGD attacks" not in skipped, "OOD detection on shuffled positions" not in skipped
    assert (ATTACK_KEYS <= set(result)) == attacked and not (ATTACK_KEYS & set(result)) == attacked
    assert (OOD_KEYS <= set(result)) == ood and not (OOD_KEYS & set(result)) == ood
    assert "Traceback" not in printed.err and (tmp_path / "eval" / "embeddings.png").exists()


def test_an_image_ood_set_for_other_inputs_is_refused_before_it_is_read(tmp_path, tiny, capsys):
    from multimix.engine import train

    train(tiny(tmp_path))
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--ood", "cifar10", "--out-dir",
                 str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("multimix eval: error: --ood 'cifar10' is a set of images; the examples of mnist1d have shape "
                   "(1, 40): use --ood shuffled")
    assert not (tmp_path / "eval" / "eval.json").exists()
