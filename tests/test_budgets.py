"""Memory budgets: a run whose data or training step cannot fit is refused in one line before any work.

The refusals use sizes no machine has (terabytes), so they hold on any machine; the estimate itself is checked
against the peak memory of a real MultiMix step measured in a fresh process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import multimix.engine.build as build_module
from multimix.cli import main
from multimix.engine import Trainer
from multimix import native
from multimix.engine.budget import MemoryBudgetError, available_memory, check_memory, step_estimate

TINY = ["--num-train", "192", "--num-test", "128", "--width", "8", "--epochs", "1", "--batch-size", "64",
        "--no-progress"]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if any data set is loaded or generated."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the memory check")

    monkeypatch.setattr(build_module, "load_dataset", refuse)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(autouse=True)
def stored_lambda(monkeypatch):
    """Λ stored (the eager sampler, as without a C compiler): the n refused below do not fit then. The one pass
    (the compiled kernels) needs a few MiB whatever n; the last test measures both."""
    monkeypatch.setenv("MULTIMIX_NATIVE", "0")


@pytest.mark.parametrize("flags,cause,work", [
    (["--method", "multimix", "--n", "1e9"], "n=1000000000", "one MultiMix step"),  # a numpy allocation traceback before
    (["--method", "dense_multimix", "--num-mix", "1000000000"], "n=1000000000", "one Dense MultiMix step"),
    (["--width", "1000000"], "width=1000000", "one ERM step"),  # an allocator traceback before
    (["--width", "1000000000"], "width=1000000000", "one ERM step"),  # swapped until killed before
    (["--num-train", "1e12"], "num_train=1000000000000", "generating MNIST-1D"),  # generated for hours before
])
def test_what_cannot_fit_is_refused_before_any_data_with_the_estimate(flags, cause, work, tmp_path, capsys, no_data):
    out = tmp_path / "run"
    assert main(["train", *TINY, *flags, "--out-dir", str(out)]) == 2
    err = one_line(capsys)
    assert f"{cause} needs " in err and f"for {work}" in err
    assert "B available" in err and "--no-memory-check" in err  # the machine's memory, and the way around
    assert not (out / "last.pt").exists()


def test_the_flag_overrides_the_refusal_and_is_not_part_of_the_run(tmp_path, tiny):
    out = tmp_path / "run"
    # set-up only (no step), so the refused size is never allocated: the run goes ahead past the check
    assert main(["train", *TINY, "--method", "multimix", "--n", "1e9", "--no-memory-check", "--stop-after-epochs",
                 "0", "--out-dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["memory_check"] is False
    # a run started with the check resumes without it (and the other way round): not a setting of the run
    first = Trainer(tiny(tmp_path, epochs=2, stop_after_epochs=1, out_dir=str(tmp_path / "b"))).run()
    assert first["status"] == "stopped"
    second = Trainer(tiny(tmp_path, epochs=2, resume=True, memory_check=False, out_dir=str(tmp_path / "b"))).run()
    assert second["status"] == "completed" and second["epochs_completed"] == 2


def test_speed_refuses_an_n_that_cannot_fit_before_measuring(tmp_path, capsys):
    out = tmp_path / "speed"
    assert main(["speed", "--ns", "10", "1e9", "--repeats", "1", "--width", "8", "--batch-size", "32",
                 "--out-dir", str(out)]) == 2
    err = one_line(capsys)
    assert "n=1000000000 needs about" in err and "Dense MultiMix step" in err and "--no-memory-check" in err
    assert not out.exists()  # nothing measured, nothing written


def test_bench_refuses_an_entry_that_cannot_fit_before_the_first_run(tmp_path, capsys):
    entries = tmp_path / "entries.yaml"
    entries.write_text("- {label: ERM, method: erm}\n- {label: Huge, method: multimix, method_args: {n: 1000000000}}\n")
    out = tmp_path / "bench"
    assert main(["bench", "--entries", str(entries), "--seeds", "1", "--epochs", "1", "--num-train", "192",
                 "--num-test", "128", "--out-dir", str(out)]) == 2
    assert "n=1000000000 needs about" in one_line(capsys)
    assert not list(out.glob("runs/*")) and not (out / "results.json").exists()


def test_the_bench_counts_the_runs_its_workers_hold_at_once(tmp_path, capsys):
    """A MultiMix n whose runs fit one at a time but not four at once (found by doubling n on the bench's config)."""
    from dataclasses import replace

    from multimix.experiments.bench import DEFAULT_CONFIG

    base = replace(DEFAULT_CONFIG, num_train=192, num_test=128, epochs=1, method="multimix")
    n = 10**5
    while n < 2**50:
        config = replace(base, method_args={"n": n})
        try:
            check_memory(config, "cpu", runs_at_once=4)
        except MemoryBudgetError as err:
            assert "× 4 runs at once (--jobs)" in str(err)
            break
        n *= 2
    else:
        pytest.fail("no n up to 2**50 was refused")
    check_memory(config, "cpu")  # alone (half the memory of four runs of n / 2, which fitted): fits
    entries = tmp_path / "entries.yaml"
    # 2n for the command: four such runs need twice the memory there is, so a change in it cannot let them start
    entries.write_text(f"- {{label: Big, method: multimix, method_args: {{n: {2 * n}}}}}\n")
    out = tmp_path / "bench"
    assert main(["bench", "--entries", str(entries), "--seeds", "4", "--epochs", "1", "--num-train", "192",
                 "--num-test", "128", "--jobs", "4", "--out-dir", str(out)]) == 2
    assert "× 4 runs at once (--jobs)" in one_line(capsys)
    assert not list(out.glob("runs/*"))


def test_library_users_get_the_named_error(tiny, tmp_path):
    config = tiny(tmp_path, method="multimix", method_args={"n": 10**9})
    with pytest.raises(MemoryBudgetError, match="n=1000000000 needs about") as err:
        check_memory(config, "cpu")
    assert isinstance(err.value, ValueError)  # the CLI's one-line user error
    check_memory(config.__class__(**{**config.to_dict(), "memory_check": False}), "cpu")  # turned off: no check


def test_available_memory_reads_the_machine():
    free = available_memory("cpu")
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo on this system")
    total = int(next(line for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")).split()[1])
    assert 0 < free <= total * 1024
    assert available_memory("meta") is None  # no query for this device: no check rather than a wrong one


MEASURE = textwrap.dedent("""
    import sys, torch
    from multimix.methods import create_method
    from multimix.models import build_model

    def status(key):  # bytes of /proc/self/status's VmRSS (resident now) or VmHWM (peak since the reset)
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

    n = int(sys.argv[1])
    torch.manual_seed(0)
    model = build_model("cnn1d", num_classes=10, input_shape=(1, 40), width=32)
    x, y = torch.randn(128, 1, 40), torch.randint(0, 10, (128,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = create_method("multimix", n=n, num_classes=10, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the model's own steps first: its gradients and the optimiser's state exist
        create_method("erm")(model, x, y).backward(); optimizer.step(); optimizer.zero_grad()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size to the current one
    before = status("VmRSS:")
    method(model, x, y).backward(); optimizer.step()
    print(status("VmHWM:") - before)
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak resident size")
@pytest.mark.parametrize("one_pass", [True, False])
def test_the_multimix_estimate_covers_a_measured_step_without_overstating_it(one_pass, monkeypatch):
    """Λ stored (the eager sampler, ``MULTIMIX_NATIVE=0``): the estimate covers the step's peak and is within 3×
    of it. One pass (the compiled kernels): Λ (98 MiB here) is never stored, and the estimate, a few MiB, covers
    the step's peak."""
    n = 200_000  # Λ alone is 98 MiB: well above the noise of the resident size
    env = {**os.environ, "MULTIMIX_NATIVE": "1" if one_pass else "0"}
    monkeypatch.setenv("MULTIMIX_NATIVE", env["MULTIMIX_NATIVE"])  # the estimate reads the same setting
    if one_pass and native.kernels() is None:
        pytest.skip("the compiled kernels are unavailable here")
    measured = int(subprocess.run([sys.executable, "-c", MEASURE, str(n)], capture_output=True, text=True, check=True,
                                  timeout=120, env=env).stdout.split()[-1])
    estimate = step_estimate(model="cnn1d", input_shape=(1, 40), num_classes=10, batch=128, width=32,
                             method="multimix", method_args={"n": n}, device="cpu").parts[f"n={n}"]
    if one_pass:
        assert measured <= estimate <= 8 * 2**20 < n * 128 * 4 / 10, (measured, estimate)
    else:
        assert measured <= estimate <= 3 * measured, (measured, estimate)
