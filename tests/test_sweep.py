"""Sweeps (``multimix bench`` as independent runs): records, resume, faults, determinism, executors.

Real processes and real signals: the bench runs as a subprocess, its workers are found in /proc and killed, the
sweep is interrupted with SIGINT and run again. Runs are tiny (MNIST-1D, 128 examples, width 8, one epoch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from multimix.cli import main
from multimix.engine.folder import FolderLock
from multimix.sampling import cpu_route

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--num-train", "128", "--num-test", "128", "--val-size", "64", "--attack-limit", "16",
        "--no-progress"]


def bench_command(out: Path, *extra: str, methods: str = "ERM,MultiMix", seeds: int = 2) -> list:
    return [sys.executable, "-m", "multimix", "bench", "--methods", methods, "--seeds", str(seeds), *TINY,
            "--out-dir", str(out), *extra]


def environment(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra.get("PYTHONPATH"), str(ROOT / "src")) if p)
    return env


def records(out: Path) -> dict:
    """The run records in ``out/runs`` by id."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def accuracies(out: Path) -> dict:
    return {i: r["result"]["test_accuracy"] for i, r in records(out).items() if r["status"] == "completed"}


def processes() -> dict:
    """pid -> (parent pid, process group) of every live process (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def run_workers(pid: int) -> list:
    """The sweep's run processes: children of its forkserver (a child of the sweep), each leading its own group."""
    table = processes()
    children = {p for p, (parent, _) in table.items() if parent == pid}
    return [p for p, (parent, group) in table.items() if parent in children and group == p]


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    """2 methods × 2 seeds, one run at a time (in this process's forkserver: no extra interpreter to start)."""
    out = tmp_path_factory.mktemp("serial") / "b"
    assert main(["bench", "--methods", "ERM,MultiMix", "--seeds", "2", *TINY, "--jobs", "1", "--out-dir", str(out)]) == 0
    return out


def test_records_resume_and_same_results_serially_and_in_parallel(tmp_path, serial, capsys):
    """One record per run; --jobs 1 and --jobs 2 give the same ids and results; a rerun trains nothing; another
    setting gives other ids; the local default opens no network socket (an audit hook in every process)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    log = tmp_path / "sockets.txt"
    (hook / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import socket, sys
        def audit(event, args):
            if event in ("socket.__new__", "socket.bind", "socket.connect"):
                family = args[1] if event == "socket.__new__" else getattr(args[0], "family", None)
                if family in (socket.AF_INET, socket.AF_INET6):
                    with open({str(log)!r}, "a") as f:
                        f.write(f"{{event}} {{args!r}}\\n")
        sys.addaudithook(audit)
    """))
    parallel = tmp_path / "parallel"
    done = subprocess.run(bench_command(parallel, "--jobs", "2"), env=environment(PYTHONPATH=str(hook)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 local worker process(es)" in done.stdout
    assert not log.exists(), f"the local executor opened network sockets: {log.read_text()[:500]}"
    first = records(serial)
    assert len(first) == 4 and accuracies(serial) == accuracies(parallel)
    assert {i: r["result"] for i, r in first.items()} == {i: r["result"] for i, r in records(parallel).items()}
    assert os.getpid() not in {r["pid"] for r in first.values()}  # trained in worker processes
    assert {r["sampler"] for r in first.values()} == {cpu_route()}  # the route of Λ, named in each record
    for run_id, record in first.items():
        assert record["status"] == "completed" and record["identity"]["config"]["seed"] in (0, 1)
        assert (serial / "runs" / f"{run_id}.log").exists() and (serial / "runs" / f"{run_id}.npz").exists()
    table = (serial / "results.md").read_text()
    assert "| ERM |" in table and "| **MultiMix** |" in table

    # the same command again: nothing trains, the records are untouched, the table is rebuilt from them
    again = tmp_path / "again"
    shutil.copytree(serial, again)
    (again / "results.md").unlink()
    capsys.readouterr()
    assert main(["bench", "--methods", "ERM,MultiMix", "--seeds", "2", *TINY, "--out-dir", str(again)]) == 0
    assert "4 already recorded" in capsys.readouterr().out
    assert records(again) == first and (again / "results.md").read_text() == table

    # another setting: other ids, and --fresh starts over
    assert main(["bench", "--methods", "ERM", "--seeds", "1", *TINY, "--num-test", "120", "--out-dir", str(again)]) == 0
    changed = set(records(again)) - set(first)
    assert len(changed) == 1 and next(iter(changed)).startswith("test-erm-seed0-")
    assert main(["bench", "--methods", "ERM", "--seeds", "1", *TINY, "--fresh", "--out-dir", str(again)]) == 0
    assert len(records(again)) == 1


def test_sigint_stops_the_sweep_and_a_rerun_trains_only_the_missing_runs(tmp_path, capsys):
    out = tmp_path / "b"
    command = bench_command(out, "--jobs", "1", seeds=3)
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "runs").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((out / "runs").glob("*.json")), "no run finished"
    workers = run_workers(proc.pid)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert time.monotonic() - stopped < 10
    assert "Run the same command again" in stdout and "stopped by SIGINT" in stderr
    time.sleep(0.5)
    assert not set(workers) & set(processes()), "worker processes left running"
    before = records(out)
    assert 1 <= len(before) < 6 and all(r["status"] == "completed" for r in before.values())
    assert "Not in the table" in (out / "results.md").read_text()  # the partial table names the missing runs

    assert main(command[3:]) == 0  # the same command (in this process)
    after = records(out)
    assert len(after) == 6 and f"{len(before)} already recorded" in capsys.readouterr().out
    assert all(after[i] == record for i, record in before.items())  # the finished runs were not trained again
    assert {after[i]["pid"] for i in set(after) - set(before)}.isdisjoint({r["pid"] for r in before.values()})


def test_sigkill_of_the_sweep_ends_its_workers_and_a_rerun_completes(tmp_path, capsys):
    """SIGKILL of the main process (nothing can be caught): its workers end within seconds on their own, and the
    same command again runs the missing runs."""
    out = tmp_path / "b"
    command = bench_command(out, "--jobs", "2", "--epochs", "3", "--num-train", "512")
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 120, []
    while not workers and time.monotonic() < deadline:
        workers = run_workers(proc.pid)
        time.sleep(0.05)
    assert workers, "no worker process seen"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while set(workers) & set(processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(workers) & set(processes()), "workers outlived the sweep"
    assert main(command[3:]) == 0
    assert len(records(out)) == 4 and all(r["status"] == "completed" for r in records(out).values())


def test_a_worker_killed_mid_run_is_retried_and_the_sweep_completes(tmp_path):
    out = tmp_path / "b"
    command = bench_command(out, "--jobs", "2", "--epochs", "30", "--num-train", "512")
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for worker in run_workers(proc.pid):
            time.sleep(0.3)  # inside its run (data, model, training)
            try:
                os.kill(worker, signal.SIGKILL)
                killed = worker
                break
            except ProcessLookupError:  # its run ended first: kill another
                continue
        time.sleep(0.05)
    assert killed is not None, "no worker process seen"
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    found = records(out)
    assert len(found) == 4 and all(r["status"] == "completed" for r in found.values())
    assert sorted(r["attempts"] for r in found.values()) == [1, 1, 1, 2]
    assert "Not in the table" not in (out / "results.md").read_text()


def test_a_run_its_data_refuses_is_recorded_failed_and_named(tmp_path, capsys):
    """Unlabelled examples on MNIST-1D (which has none) pass the config checks, and the data set refuses them."""
    entries = tmp_path / "entries.yaml"
    entries.write_text("- {label: ERM, method: erm}\n"
                       "- {label: SD unlabelled, method: multimix, ours: true, distill: {}, "
                       "config: {unlabelled_batch: 8}}\n")
    out = tmp_path / "b"
    # exit status 1: the table is written, with holes a script must not take for a complete comparison
    assert main(["bench", "--entries", str(entries), "--seeds", "2", *TINY, "--jobs", "2", "--out-dir", str(out)]) == 1
    found = records(out)
    failed = [r for r in found.values() if r["status"] == "failed"]
    assert len(found) == 4 and len(failed) == 2 and all(r["label"] == "SD unlabelled" for r in failed)
    assert all("unlabelled" in r["error"] and "\n" not in r["error"] for r in failed)
    assert "Traceback" in (out / "runs" / f"{failed[0]['id']}.log").read_text()
    table = (out / "results.md").read_text()
    assert "Not in the table (2 run(s)): SD unlabelled seed 0 (failed: " in table
    assert "SD unlabelled seed 1 (failed" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in results["rows"]] == ["ERM"]


def test_paired_statistics_use_complete_pairs_only():
    from multimix.experiments.bench import missing_note, summarise
    from multimix.experiments.stats import paired_comparison

    runs = [{"label": label, "ours": label == "B", "seed": seed, "test_accuracy": acc}
            for label, accs in (("A", {0: 50.0, 1: 60.0, 2: 70.0}), ("B", {0: 55.0, 2: 71.0})) for seed, acc in
            accs.items()]
    results = {**summarise(runs), "seeds": 3, "missing": [{"label": "B", "seed": 1, "status": "missing"}]}
    row = next(r for r in results["rows"] if r["method"] == "B")
    assert row["vs_best_baseline"] == {**paired_comparison([55.0, 71.0], [50.0, 70.0]), "pairs": 2}
    note = missing_note(results)
    assert "B seed 1 (missing)" in note and "B 2 of 3 seeds" in note


def test_a_second_sweep_into_the_same_folder_is_refused(tmp_path, capsys):
    with FolderLock(tmp_path / "b", "sweep"):
        assert main(["bench", "--methods", "ERM", "--seeds", "1", *TINY, "--out-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "in use by a sweep" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [(["--jobs", "0"], "--jobs: must be an integer >= 1, got 0"),
                                            (["--ray", "auto", "--jobs", "2"], "--jobs and --threads-per-run"),
                                            (["--threads-per-run", "0"], "--threads-per-run: must be an integer >= 1"),
                                            (["--ray", "auto", "--cpus-per-run", "0"], "--cpus-per-run must be > 0")])
def test_sweep_flags_are_checked_before_any_work(tmp_path, capsys, flags, message):
    assert main(["bench", "--methods", "ERM", *TINY, "--out-dir", str(tmp_path / "b"), *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "b" / "runs").exists()


def unshare_works() -> str:
    """Why a loopback-only network namespace cannot be made here ('' when it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    done = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return "" if done.returncode == 0 else f"unshare -n is not permitted here: {done.stderr.strip()[:200]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_ray_cluster_gives_the_serial_records(tmp_path, serial):
    """A Ray head started by the test in a network namespace with only loopback; 2 methods × 2 seeds through
    --ray, whose records equal those of the serial run."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'multimix[cluster]'")
    why = unshare_works()
    if why:
        pytest.skip(why)
    ray = Path(sys.executable).with_name("ray")
    cluster = tmp_path / "ray"
    port = free_port()
    script = (f"ip link set lo up && {ray} start --head --port {port} --num-cpus 2 --include-dashboard false "
              f"--disable-usage-stats >{tmp_path}/ray-start.log 2>&1 || exit 90; "
              + " ".join(bench_command(cluster, "--ray", f"127.0.0.1:{port}", "--cpus-per-run", "1"))
              + f"; rc=$?; {ray} stop --force >/dev/null 2>&1; exit $rc")
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], env=environment(RAY_USAGE_STATS_ENABLED="0"),
                          capture_output=True, text=True, timeout=400)
    start_log = (tmp_path / "ray-start.log").read_text()[-2000:] if (tmp_path / "ray-start.log").exists() else ""
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], start_log)
    assert "Ray cluster at 127.0.0.1" in done.stdout
    assert accuracies(cluster) == accuracies(serial) and len(accuracies(serial)) == 4
    assert {r["executor"] for r in records(cluster).values()} == {"ray"}
    assert {r["id"]: r["result"] for r in records(cluster).values()} == {
        r["id"]: r["result"] for r in records(serial).values()}
