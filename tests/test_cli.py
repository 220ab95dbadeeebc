"""The command line: clear one-line errors, recipes and flag overrides, the eval and speed commands."""

import argparse
import json

import pytest

import multimix
from multimix.cli import config_from_args, main, train_parser
from multimix.engine import train


@pytest.mark.parametrize("argv,match", [
    (["train", "--method", "mixupp"], "valid methods: erm, mixup"),
    (["train", "--model", "resnet9000"], "valid models: cnn1d"),
    (["train", "--dataset", "mnist2d"], "valid datasets: mnist1d"),
    (["train", "--dataset", "imagefolder", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["train", "--dataset", "imagefolder"], "--data-dir"),
    (["train", "--config", "no_such_recipe"], "bundled: "),
    (["bench", "--methods", "erm,bogus"], "valid: "),
    (["train", "--method", "erm", "--n", "100"], "unknown key 'n'"),
])
def test_bad_names_and_paths_give_clear_errors(argv, match, capsys, tmp_path):
    assert main(argv + (["--out-dir", str(tmp_path / "o")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_config_file_and_flag_override(tmp_path):
    parser = argparse.ArgumentParser()
    train_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(parser.parse_args(["train", "--config", "mnist1d_cnn", "--alpha", "0.1", "--epochs", "3"]))
    # the recipe names MultiMix without restating its defaults: the flag is the only method setting
    assert config.method == "multimix" and config.epochs == 3
    assert config.method_args == {"alpha": 0.1}
    config = config_from_args(parser.parse_args(["train", "--config", "mnist1d_cnn", "--distill"]))
    assert config.distill == multimix.SelfDistillation.DEFAULTS
    other = config_from_args(parser.parse_args(["train", "--config", "mnist1d_cnn", "--method", "mixup"]))
    assert other.method_args == {}  # the recipe's MultiMix arguments do not leak into another method
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_args(parser.parse_args(["train", "--config", str(yaml_path)]))


def test_eval_command_writes_report_and_plots(tmp_path, tiny, png_ok, capsys):
    train(tiny(tmp_path, num_train=512, num_test=256, epochs=2))
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--pgd-steps", "3", "--attack-limit", "128"]) == 0
    out_dir = tmp_path / "run" / "eval"
    result = json.loads((out_dir / "eval.json").read_text())
    for key in ("accuracy", "ece", "fgsm_error", "pgd_error", "msp_auroc", "energy_auroc", "msp_fpr95",
                "energy_fpr95", "alignment", "uniformity", "class_distance_ratio"):
        assert key in result, key
    assert 0 <= result["ece"] <= 100 and 0 <= result["energy_auroc"] <= 100
    assert result["pgd_error"] >= result["clean_error"] and result["fgsm_error"] >= result["clean_error"]
    assert png_ok(out_dir / "reliability.png") and png_ok(out_dir / "embeddings.png")
    assert "wrote" in capsys.readouterr().out


def test_eval_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_speed_command(tmp_path, png_ok, capsys):
    assert main(["speed", "--out-dir", str(tmp_path / "speed"), "--ns", "10", "300", "--repeats", "1",
                 "--width", "8", "--batch-size", "32"]) == 0
    rows = json.loads((tmp_path / "speed" / "speed.json").read_text())
    assert [r["n"] for r in rows] == [10, 300]
    assert rows[1]["mixup_passes"] == 10 and not rows[1]["mixup_extrapolated"]
    assert all(r["multimix_examples_per_s"] > 0 and r["mixup_examples_per_s"] > 0 for r in rows)
    assert png_ok(tmp_path / "speed" / "speed.png")


@pytest.mark.parametrize("argv,match", [
    (["train", "--device", "tpu9"], "device must be auto, cpu, cuda"),
    (["train", "--lr", "inf"], "lr must be a finite number > 0"),
    (["train", "--num-train", "0"], "num_train must be >= 1"),
    (["train", "--val-size", "-1"], "val_size must be >= 0"),
    (["train", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--method", "multimix", "--attention", "cam"], "unknown key 'attention'"),
])
def test_bad_values_are_refused_before_any_work(argv, match, capsys, tmp_path):
    out = tmp_path / "o"
    assert main(argv + ["--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists()


def test_cuda_without_cuda_is_a_clear_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--device", "cuda", "--out-dir", str(tmp_path / "o")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_output_directory_that_cannot_be_created_fails_first(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--out-dir", str(blocker / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "Traceback" not in err


def test_eval_checks_its_arguments_and_output_before_evaluating(tmp_path, tiny, capsys):
    train(tiny(tmp_path))
    checkpoint = str(tmp_path / "run" / "last.pt")
    assert main(["eval", checkpoint, "--attack-limit", "0"]) == 2
    assert "argument --attack-limit: must be an integer >= 1, got 0" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["eval", checkpoint, "--out-dir", str(blocker / "eval")]) == 2
    assert str(blocker) in capsys.readouterr().err


def test_unreadable_image_and_one_class_folders_are_named(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * c, 0, 0)).save(root / split / f"c{c}" / f"{i}.png")
    broken = root / "train" / "c1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:10])  # truncated to 10 bytes
    base = ["train", "--dataset", "imagefolder", "--data-dir", str(root), "--model", "preact_resnet_small",
            "--batch-size", "2", "--epochs", "1", "--no-progress"]
    assert main(base + ["--out-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and str(broken) in err and "Traceback" not in err
    single = tmp_path / "single"
    for split in ("train", "test"):
        (single / split / "only").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(single / split / "only" / "0.png")
    assert main(base[:4] + [str(single)] + base[5:] + ["--out-dir", str(tmp_path / "b")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_bench_without_matplotlib_writes_tables_and_says_so(tmp_path, capsys, monkeypatch):
    import multimix.experiments.bench as bench

    monkeypatch.setattr(bench, "matplotlib_available", lambda: False)
    out = tmp_path / "bench"
    assert main(["bench", "--methods", "ERM", "--seeds", "1", "--epochs", "1", "--num-train", "256",
                 "--num-test", "128", "--attack-limit", "16", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plots skipped" in printed and (out / "results.md").exists() and not (out / "results.png").exists()
    assert "256 train / 5000 validation / 128 test" in (out / "results.md").read_text()  # the sizes used, never "None"


def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch):
    """A bug is not a user error: it propagates (with its traceback) instead of becoming one line and status 2."""
    import multimix.engine.trainer as trainer_module

    def broken(self, epoch):
        raise ValueError("a bug inside the training loop")

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", broken)
    with pytest.raises(ValueError, match="a bug inside the training loop"):
        main(["train", "--num-train", "192", "--num-test", "64", "--width", "8", "--epochs", "1", "--no-progress",
              "--out-dir", str(tmp_path / "run")])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "a bug inside the training loop" in summary["error"]
