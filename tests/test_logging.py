"""What a run reports: metrics files, the progress bar (which never changes the computation), metric rows."""

import csv
import json

import torch

from multimix.engine import Trainer
from multimix.engine.logging import MetricsLogger, ProgressBar, format_row


def test_disabled_progress_bar_is_a_no_op(capsys):
    bar = ProgressBar(10, False, "epoch 1/1")
    assert bar.bar is None
    for _ in range(3):
        bar.step(loss="0.5")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_enabled_progress_bar_counts_steps(capsys):
    bar = ProgressBar(4, True, "epoch 1/2")
    for _ in range(4):
        bar.step(loss="0.5000")
    assert bar.bar.n == 4
    bar.close()


def test_lines_printed_while_a_bar_shows_clear_it_first_and_redraw_it_after(capsys):
    bar = ProgressBar(4, True, "runs")
    bar.step()
    capsys.readouterr()
    with bar.printing():
        print("run 1 done")
        cleared = capsys.readouterr()
    after = capsys.readouterr()
    bar.close()
    capsys.readouterr()
    assert cleared.out == "run 1 done\n"
    assert cleared.err.startswith("\r") and cleared.err.strip() == ""  # the bar's line wiped before the text
    assert "1/4" in after.err  # and drawn again below it
    off = ProgressBar(4, False, "runs")
    with off.printing():
        print("plain")
    assert capsys.readouterr() == ("plain\n", "")


def test_progress_does_not_change_training(tmp_path, tiny, capsys):
    """The same two epochs with and without the progress bar and per-epoch lines: exactly the same weights."""
    models = {}
    for progress in (True, False):
        trainer = Trainer(tiny(tmp_path, out_dir=str(tmp_path / str(progress)), epochs=2, progress=progress,
                               checkpoint=False, method="multimix", method_args={"n": 32}))
        summary = trainer.run()
        assert summary["status"] == "completed" and summary["epochs_completed"] == 2
        models[progress] = trainer.model.state_dict()
    out = capsys.readouterr().out
    assert "epoch=1" in out and "epoch=2" in out  # the per-epoch lines of the progress=True run
    assert models[True].keys() == models[False].keys()
    for name, value in models[True].items():
        assert torch.equal(value, models[False][name]), name
    assert not (tmp_path / "True" / "last.pt").exists()  # checkpoint=False writes nothing


def test_metrics_logger_writes_jsonl_and_csv(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    history = [{"epoch": 1, "train_loss": 1.25, "lr": 0.1}]
    logger.write(history)
    history.append({"epoch": 2, "train_loss": 0.75, "lr": 0.05, "test_accuracy": 90.0})
    logger.write(history)
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == history
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["epoch"] for row in table] == ["1", "2"]
    assert float(table[1]["train_loss"]) == 0.75 and float(table[1]["test_accuracy"]) == 90.0
    assert table[0]["test_accuracy"] == ""  # a column that appeared later is blank before


def test_metrics_logger_disabled_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "out", enabled=False)
    logger.write([{"epoch": 1, "train_loss": 1.0}])
    logger.close()
    assert not (tmp_path / "out").exists()


def test_format_row():
    assert format_row({"epoch": 3, "train_loss": 0.123456, "lr": 0.1, "note": "x"}) == \
        "epoch=3 train_loss=0.1235 lr=0.1 note=x"
