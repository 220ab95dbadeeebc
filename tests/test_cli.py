"""The trainer and the command line: tiny end-to-end runs, resume, bench outputs, errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import multimix
import multimix.train as train_module
from multimix.bench import DEFAULT_ENTRIES
from multimix.cli import main
from multimix.train import CheckpointError, NonFiniteLossError, TrainConfig, load_checkpoint, train


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["MULTIMIX_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def tiny(tmp_path, **kw):
    base = dict(dataset="mnist1d", num_train=192, num_test=128, model="cnn1d", width=8, epochs=1, batch_size=64,
                progress=False, out_dir=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


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


BENCH_METHODS = [(label, method, args, distill) for label, method, args, distill, _ in DEFAULT_ENTRIES]


@pytest.mark.parametrize("label,method,args,distill", BENCH_METHODS, ids=[e[0] for e in BENCH_METHODS])
def test_every_method_end_to_end_on_mnist1d(tmp_path, label, method, args, distill):
    args = dict(args, n=64) if "n" in args else dict(args)
    summary = train(tiny(tmp_path, method=method, method_args=args, distill=distill, epochs=2))
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert 0 <= summary["final"]["test_accuracy"] <= 100
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("label,method,args,distill", BENCH_METHODS, ids=[e[0] for e in BENCH_METHODS])
def test_every_method_end_to_end_on_image_folder(tmp_path, image_folder, label, method, args, distill):
    args = dict(args, n=32) if "n" in args else dict(args)
    config = tiny(tmp_path, dataset="imagefolder", data_dir=str(image_folder), image_size=16, model="preact_resnet_small",
                  width=4, batch_size=12, num_train=None, num_test=None, val_size=6, method=method,
                  method_args=args, distill=distill)
    summary = train(config)
    assert summary["status"] == "completed"
    assert {"val_accuracy", "test_accuracy"} <= set(summary["final"])


def test_learning_happens(tmp_path):
    """A short ERM run on MNIST-1D beats chance (10%) by a wide margin."""
    summary = train(tiny(tmp_path, num_train=2000, num_test=500, width=16, epochs=4))
    assert summary["final"]["test_accuracy"] > 40


def test_resume_is_bit_identical(tmp_path):
    common = dict(method="multimix", method_args={"n": 64, "alpha": 0.5}, distill={"momentum": 0.9, "temperature": 1.0, "weight": 0.5},
                  epochs=3, schedule="cosine")
    full = train(tiny(tmp_path, out_dir=str(tmp_path / "full"), **common))
    first = train(tiny(tmp_path, out_dir=str(tmp_path / "split"), stop_after_epochs=1, **common))
    assert first["status"] == "stopped"
    resumed = train(tiny(tmp_path, out_dir=str(tmp_path / "split"), resume=True, **common))
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    for key, sa, sb in (("model", a["model"], b["model"]), ("teacher", a["teacher"]["teacher"], b["teacher"]["teacher"])):
        for name, value in sa.items():
            assert torch.equal(value, sb[name]), f"{key}.{name} differs after resume"
    assert a["teacher"]["updates"] == b["teacher"]["updates"] > 0
    assert a["history"][-1]["test_accuracy"] == b["history"][-1]["test_accuracy"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    config = tiny(tmp_path, epochs=3)
    train(dataclasses.replace(config, stop_after_epochs=1))
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    real = train_module.create_method

    def poisoned(*args, **kwargs):
        method = real(*args, **kwargs)
        return lambda model, x, y: method(model, x, y) * float("nan")

    monkeypatch.setattr(train_module, "create_method", poisoned)
    with pytest.raises(NonFiniteLossError, match="nan"):
        train(dataclasses.replace(config, resume=True))
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "multimix", "train", "--num-train", "4000", "--num-test", "128",
                             "--width", "8", "--epochs", "200", "--batch-size", "32", "--out-dir", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1
    assert (out / "interrupted.pt").exists()
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_bench_writes_table_and_plot(tmp_path, capsys):
    code = main(["bench", "--out-dir", str(tmp_path / "bench"), "--seeds", "2", "--epochs", "1",
                 "--num-train", "256", "--num-test", "128", "--methods", "ERM,input mixup,MultiMix"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method |" in out and "Δ vs best baseline" in out
    for name in ("results.md", "results.csv", "results.json"):
        assert (tmp_path / "bench" / name).stat().st_size > 100
    png = tmp_path / "bench" / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(results["runs"]) == 6 and results["best_baseline"] in ("ERM", "input mixup")
    mm = next(r for r in results["rows"] if r["method"] == "MultiMix")
    assert "vs_best_baseline" in mm
    assert {"pgd_error", "ece", "energy_auroc", "alignment", "uniformity"} <= set(mm)
    assert "PGD error" in (tmp_path / "bench" / "results.md").read_text()
    assert _png_ok(tmp_path / "bench" / "embeddings.png")


def test_bench_tune_selects_on_validation_and_inherits(tmp_path, capsys):
    """--tune: one chosen candidate per method, the best by validation accuracy; SD starts from MultiMix's choice."""
    code = main(["bench", "--tune", "--out-dir", str(tmp_path / "b"), "--seeds", "1", "--tune-seeds", "1",
                 "--epochs", "2", "--num-train", "256", "--num-test", "128", "--val-size", "256",
                 "--attack-limit", "64", "--methods", "ERM,input mixup,multimix"])
    assert code == 0
    tuning = json.loads((tmp_path / "b" / "tuning.json").read_text())
    labels = ["ERM", "input mixup", "MultiMix", "MultiMix + self-distillation"]
    assert list(dict.fromkeys(r["label"] for r in tuning["records"])) == labels
    for label in labels:
        records = [r for r in tuning["records"] if r["label"] == label]
        chosen = [r for r in records if r.get("chosen")]
        assert len(chosen) == 1 and chosen[0]["val_mean"] == max(r["val_mean"] for r in records)
        assert all(seed >= 1000 for seed in tuning["seeds"])  # never the final comparison's seeds
    multimix_choice = next(r for r in tuning["records"] if r["label"] == "MultiMix" and r.get("chosen"))
    for r in tuning["records"]:
        if r["label"] == "MultiMix + self-distillation":
            assert r["distill"] and all(r["method_args"][k] == v for k, v in multimix_choice["method_args"].items())
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    used = {r["label"]: r["method_args"] for r in results["runs"]}
    assert used["MultiMix"] == multimix_choice["method_args"]
    assert _png_ok(tmp_path / "b" / "tuning.png")


def test_tune_needs_a_validation_split(tmp_path):
    from dataclasses import replace

    from multimix.bench import DEFAULT_CONFIG
    from multimix.tune import tune
    with pytest.raises(ValueError, match="val_size"):
        tune(tmp_path, replace(DEFAULT_CONFIG, val_size=0), seeds=1)


@pytest.mark.parametrize("argv,match", [
    (["train", "--method", "mixupp"], "valid methods: erm, mixup"),
    (["train", "--model", "resnet9000"], "valid models: cnn1d"),
    (["train", "--dataset", "mnist2d"], "valid datasets: mnist1d"),
    (["train", "--dataset", "imagefolder", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["train", "--dataset", "imagefolder"], "--data-dir"),
    (["train", "--config", "no_such_recipe"], "bundled: "),
    (["bench", "--methods", "erm,bogus"], "valid: "),
    (["train", "--method", "erm", "--n", "100"], "does not take"),
])
def test_bad_names_and_paths_give_clear_errors(argv, match, capsys, tmp_path):
    assert main(argv + (["--out-dir", str(tmp_path / "o")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_corrupted_and_mismatched_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(tmp_path, epochs=2, stop_after_epochs=1))
    # a different width cannot load this checkpoint
    assert main(["train", "--num-train", "192", "--num-test", "128", "--width", "16", "--epochs", "2",
                 "--batch-size", "64", "--out-dir", str(out), "--resume", "--no-progress"]) == 2
    assert "does not match this run's model" in capsys.readouterr().err
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(out / "last.pt")
    assert main(["train", "--num-train", "192", "--num-test", "128", "--width", "8", "--epochs", "2",
                 "--batch-size", "64", "--out-dir", str(out), "--resume", "--no-progress"]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    train(tiny(tmp_path))
    assert main(["train", "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_config_file_and_flag_override(tmp_path):
    from multimix.cli import _train_parser, config_from_args
    import argparse

    parser = argparse.ArgumentParser()
    _train_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(parser.parse_args(["train", "--config", "mnist1d_cnn", "--alpha", "0.1", "--epochs", "3"]))
    # --alpha replaces the recipe's concentration (the two are one setting) and keeps its other arguments
    assert config.method == "multimix" and config.epochs == 3
    assert config.method_args == {"n": 1000, "alpha": 0.1, "clean_weight": 1.0}
    config = config_from_args(parser.parse_args(["train", "--config", "mnist1d_cnn", "--distill"]))
    assert config.distill == multimix.SelfDistillation.DEFAULTS
    other = config_from_args(parser.parse_args(["train", "--config", "mnist1d_cnn", "--method", "mixup"]))
    assert other.method_args == {}  # the recipe's MultiMix arguments do not leak into another method
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_args(parser.parse_args(["train", "--config", str(yaml_path)]))


def _png_ok(path, min_bytes=5000):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > min_bytes


def test_eval_command_writes_report_and_plots(tmp_path, capsys):
    train(tiny(tmp_path, num_train=512, num_test=256, epochs=2))
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--pgd-steps", "3", "--attack-limit", "128"]) == 0
    out_dir = tmp_path / "run" / "eval"
    result = json.loads((out_dir / "eval.json").read_text())
    for key in ("accuracy", "ece", "fgsm_error", "pgd_error", "msp_auroc", "energy_auroc", "msp_fpr95",
                "energy_fpr95", "alignment", "uniformity", "class_distance_ratio"):
        assert key in result, key
    assert 0 <= result["ece"] <= 100 and 0 <= result["energy_auroc"] <= 100
    assert result["pgd_error"] >= result["clean_error"] and result["fgsm_error"] >= result["clean_error"]
    assert _png_ok(out_dir / "reliability.png") and _png_ok(out_dir / "embeddings.png")
    assert "wrote" in capsys.readouterr().out


def test_eval_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_speed_command(tmp_path, capsys):
    assert main(["speed", "--out-dir", str(tmp_path / "speed"), "--ns", "10", "300", "--repeats", "1",
                 "--width", "8", "--batch-size", "32"]) == 0
    rows = json.loads((tmp_path / "speed" / "speed.json").read_text())
    assert [r["n"] for r in rows] == [10, 300]
    assert rows[1]["mixup_passes"] == 10 and not rows[1]["mixup_extrapolated"]
    assert all(r["multimix_examples_per_s"] > 0 and r["mixup_examples_per_s"] > 0 for r in rows)
    assert _png_ok(tmp_path / "speed" / "speed.png")
