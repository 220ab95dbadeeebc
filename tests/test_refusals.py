"""Bad input is refused in one bounded line before any work: every numeric flag of every command, and YAML recipes
and bench files that are small on disk but enormous in memory (aliases, nesting), through the real command line."""

import subprocess
import sys
import time

import pytest

import multimix.engine.build as build_module
from multimix.cli import main

TINY = ["--num-train", "192", "--num-test", "128", "--width", "8", "--epochs", "1", "--no-progress"]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if any data set is loaded or generated."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the input was checked")

    monkeypatch.setattr(build_module, "load_dataset", refuse)


def one_line(capsys, limit: int = 400) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and len(err) <= limit, err
    return err


@pytest.mark.parametrize("argv,match", [
    # multimix speed: tracebacks (0, -5, repeats 0), or accepted silently (nan seconds)
    (["speed", "--width", "0"], "--width: must be an integer >= 1, got 0"),
    (["speed", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["speed", "--ns", "10", "0"], "--ns: must be an integer >= 1, got 0"),
    (["speed", "--ns", "-5"], "--ns: must be an integer >= 1, got -5"),
    (["speed", "--repeats", "0"], "--repeats: must be an integer >= 1, got 0"),
    (["speed", "--max-mixup-seconds", "nan"], "--max-mixup-seconds: must be a finite number >= 0, got nan"),
    (["speed", "--max-mixup-seconds", "-1"], "--max-mixup-seconds: must be a finite number >= 0, got -1"),
    (["speed", "--ns", "ten"], "--ns: expected an integer, got 'ten'"),
    # multimix eval
    (["eval", "last.pt", "--eps", "nan"], "--eps: must be a finite number >= 0, got nan"),
    (["eval", "last.pt", "--eps", "inf"], "--eps: must be a finite number >= 0, got inf"),
    (["eval", "last.pt", "--eps", "-0.1"], "--eps: must be a finite number >= 0, got -0.1"),
    (["eval", "last.pt", "--pgd-steps", "0"], "--pgd-steps: must be an integer >= 1, got 0"),
    (["eval", "last.pt", "--attack-limit", "-3"], "--attack-limit: must be an integer >= 1, got -3"),
    # multimix bench
    (["bench", "--seeds", "0"], "--seeds: must be an integer >= 1, got 0"),
    (["bench", "--first-seed", "-1"], "--first-seed: must be an integer in [0, 4294967295], got -1"),
    (["bench", "--first-seed", "4294967295", "--seeds", "2"], "--first-seed + --seeds - 1, must be at most 4294967295"),
    (["bench", "--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["bench", "--num-train", "0"], "--num-train: must be an integer >= 1, got 0"),
    (["bench", "--num-test", "-1"], "--num-test: must be an integer >= 1, got -1"),
    (["bench", "--val-size", "-1"], "--val-size: must be an integer >= 0, got -1"),
    (["bench", "--tune-seeds", "0"], "--tune-seeds: must be an integer >= 1, got 0"),
    (["bench", "--attack-limit", "0"], "--attack-limit: must be an integer >= 1, got 0"),
    # multimix train: the settings' own checks, now before any data (they ran after it, or not at all)
    (["train", "--milestones", "nan"], "milestones[0] must be a fraction of the run in [0, 1], got nan"),
    (["train", "--milestones", "0.5", "2"], "milestones[1] must be a fraction of the run in [0, 1], got 2.0"),
    (["train", "--seed", "99999999999999999999"], "seed must be an integer in [0, 4294967295]"),
    (["train", "--dist-timeout", "1e300"], "dist_timeout must be > 0 and <= 1e+09 seconds"),
    (["train", "--workers", "1000000"], "workers must be at most 1024"),
    (["train", "--epochs", "1e400"], "--epochs: expected an integer below 2^63, got '1e400'"),
    (["train", "--method", "multimix", "--alpha", "nan"], "method_args of 'multimix': alpha must be a positive"),
    (["train", "--method", "multimix", "--n", "0"], "method_args of 'multimix': n must be an integer >= 1, got 0"),
    (["train", "--method", "mixup", "--label-smoothing", "2"], "method_args of 'mixup': label_smoothing must be in"),
    (["train", "--distill", "--distill-momentum", "nan"], "distill: momentum must be in [0, 1), got nan"),
])
def test_every_numeric_setting_is_checked_before_any_work(argv, match, tmp_path, capsys, no_data):
    out = tmp_path / "out"
    assert main([*argv, *(TINY if argv[0] == "train" else []), "--out-dir", str(out)]) == 2
    err = one_line(capsys)
    assert err.startswith(f"multimix {argv[0]}: error: ") and match in err
    assert not out.exists() or not any(out.iterdir())  # nothing measured, trained or written


def test_integer_flags_take_scientific_notation(tmp_path, capsys, no_data):
    """``--n 1e7`` is what the issue typed: it is read as 10^7 (and refused only by what it costs)."""
    assert main(["speed", "--ns", "1e12", "--out-dir", str(tmp_path / "s")]) == 2
    assert "n=1000000000000 needs about" in one_line(capsys)
    assert main(["speed", "--ns", "1.5", "--out-dir", str(tmp_path / "s")]) == 2
    assert "expected an integer" in one_line(capsys)


def test_messages_never_print_an_unbounded_value(tmp_path, capsys, no_data):
    long_name = "x" * 200_000
    assert main(["train", "--dataset", long_name, *TINY, "--out-dir", str(tmp_path / "a")]) == 2
    assert "dataset must be at most 4096 characters, got 200000" in one_line(capsys)
    recipe = tmp_path / "long.yaml"
    recipe.write_text("method: multimix\nmethod_args: {alpha: [" + ", ".join(["1"] * 5_000) + "]}\n")
    assert main(["train", "--config", str(recipe), "--out-dir", str(tmp_path / "b")]) == 2
    assert "alpha must be" in one_line(capsys)
    recipe.write_text("".join(f"key{i}: 1\n" for i in range(3_000)))
    assert main(["train", "--config", str(recipe), "--out-dir", str(tmp_path / "c")]) == 2
    assert "unknown keys" in one_line(capsys, limit=2200)
    assert main(["train", "--method", "mixup", "--attention", "q" * 100_000, "--out-dir", str(tmp_path / "d")]) == 2
    assert "invalid choice" in one_line(capsys, limit=2200)


def billion_laughs() -> str:
    """A 1 KiB YAML document that stands for 10^9 strings (10 aliases of 10 aliases ... of 10 strings)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\nmethod: multimix\nmethod_args: *a8\n"


def test_an_alias_bomb_is_refused_by_the_real_command_in_one_bounded_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "multimix", "train", "--config", str(path), "--out-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.perf_counter() - start < 60
    assert done.stderr.startswith(f"multimix train: error: config {path} expands to more than 100000 values")
    assert len(done.stderr.splitlines()) == 1 and len(done.stderr) < 300
    assert not done.stdout and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,text,match", [
    ("deep.yaml", "method_args: " + "[" * 200_000 + "]" * 200_000 + "\n", "nests deeper than 32 levels (at line 1)"),
    ("chain.yaml", "".join(f"k{i}: &k{i} [{f'*k{i - 1}' if i else 0}]\n" for i in range(40)),
     "nests deeper than 32 levels (at line 32), its aliases expanded"),
    ("recursive.yaml", "method_args: &a {alpha: *a}\n", "has a recursive alias (at line 1)"),
    ("big.yaml", "data_dir: '" + "a" * (2 << 20) + "'\n", "is larger than 1 MiB"),
    ("long_text.yaml", "t: &t '" + "a" * 100_000 + "'\nx: [" + ", ".join(["*t"] * 50) + "]\n",
     "or 4194304 characters (at line 2)"),
    ("huge_int.yaml", "epochs: " + "9" * 10_000 + "\n", "holds a value that cannot be read"),
])
def test_a_hostile_recipe_is_refused_in_one_bounded_line(name, text, match, tmp_path, capsys, no_data):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out-dir", str(tmp_path / "run")]) == 2
    err = one_line(capsys)
    assert err.startswith(f"multimix train: error: config {path} ") and match in err
    assert not (tmp_path / "run").exists()


def test_bench_files_are_read_the_same_way(tmp_path, capsys):
    entries = tmp_path / "entries.yaml"
    laughs = ['- &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"- &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    entries.write_text("\n".join(laughs) + "\n")  # a list, as an entries file is: 10^9 strings in 1 KiB
    assert main(["bench", "--entries", str(entries), "--out-dir", str(tmp_path / "bench")]) == 2
    assert "expands to more than 100000 values" in one_line(capsys)
    # aliases that stay small are still read: a bundled grid shares its candidates through one
    from multimix.experiments.entries import bench_file, load_grid

    candidates = [repr(spec.candidates) for spec in load_grid(bench_file("graph_consistency_grid"))]
    assert any(candidates.count(shared) == 2 for shared in candidates)  # `candidates: &consistency` and its alias
