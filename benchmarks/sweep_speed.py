"""Wall time of ``multimix bench`` as a sweep: the default local executor against one process, and resume.

Side by side on the same commit, each into a fresh folder:

1. ``--jobs 1 --threads-per-run T`` (T = the usable cores): one run at a time
   with every core's thread, what ``multimix bench`` did before it was a sweep;
2. the default (one single-threaded process per usable core);
3. resume: the default again into a fresh folder, its main process killed with
   SIGKILL at half of (2)'s wall time, then the same command again: the time of
   that rerun against (2).

Checks that (1) and (2) give the same test accuracy for every run, and prints
the load average before and after (other work on the machine biases the times).

    .venv/bin/python benchmarks/sweep_speed.py [--out runs/sweep-speed] [--serial-threads T] [bench flags, e.g. --seeds 3]

``--serial-threads 1`` compares with one single-threaded process instead (on a machine busy with other work, two
threads per process spin at every parallel region while the other thread waits for a core, which makes (1) far
slower than it is on an idle machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from multimix.experiments.executors import usable_cpus


def bench(out: Path, flags, *extra: str) -> list:
    return [sys.executable, "-m", "multimix", "bench", "--no-progress", "--out-dir", str(out), *flags, *extra]


def timed(command, env) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def accuracies(out: Path) -> dict:
    """Each record's accuracies: test (test seeds) or validation (tuning candidates)."""
    return {p.stem: {k: v for k, v in json.loads(p.read_text())["result"].items() if k.endswith("accuracy")}
            for p in (out / "runs").glob("*.json")}


def main(argv) -> None:
    root = Path("runs/sweep-speed")
    if "--out" in argv:
        i = argv.index("--out")
        root = Path(argv[i + 1])
        del argv[i:i + 2]
    cores = usable_cpus()
    threads = cores
    if "--serial-threads" in argv:
        i = argv.index("--serial-threads")
        threads = int(argv[i + 1])
        del argv[i:i + 2]
    flags = list(argv)
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"load average before: {os.getloadavg()}, {cores} usable cores, bench flags: {flags or 'defaults'}",
          flush=True)
    serial = timed(bench(root / "serial", flags, "--jobs", "1", "--threads-per-run", str(threads)), env)
    print(f"--jobs 1 --threads-per-run {threads}: {serial:.0f} s", flush=True)
    default = timed(bench(root / "default", flags), env)
    print(f"default (--jobs {cores}, 1 thread each): {default:.0f} s  -> {serial / default:.2f}x less wall time",
          flush=True)
    same = accuracies(root / "serial") == accuracies(root / "default")
    print(f"same test accuracy for every run ({len(accuracies(root / 'serial'))} runs): {same}", flush=True)

    command = bench(root / "resume", flags)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(default / 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the orphaned workers notice their forkserver is gone within a second
    kept = len(list((root / "resume" / "runs").glob("*.json")))
    rerun = timed(command, env)
    print(f"resume: SIGKILL at {default / 2:.0f} s kept {kept} records; the rerun took {rerun:.0f} s "
          f"({rerun / default:.2f} of a full run); same accuracies: {accuracies(root / 'resume') == accuracies(root / 'default')}",
          flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
