"""Runs ``multimix`` with one injected fault; used by test_faults.py in a subprocess.

    python fault_driver.py FAULT ARGV...

FAULT is ``SIGNAL@WHERE`` with SIGNAL one of SIGINT, SIGTERM, SIGKILL and WHERE one of
``step:K`` (after the K-th training step), ``save:K`` (half-way through writing the K-th
checkpoint), ``after-save:K`` (right after the K-th checkpoint is in place), ``setup:1`` (while
the data loads, before training); a leading ``ignored-`` starts the process with SIGINT ignored,
as a job launched with ``&`` is. The process signals itself, so the fault lands exactly where asked.
SIGNAL ``SIGTERM-group`` sends SIGTERM to the whole process group (data-loader workers included),
as ``timeout``, ``scancel`` and systemd do.

FAULT ``pause@step:K`` signals nothing: after the K-th step it creates the file ``$FAULT_PAUSED``
and waits until the file ``$FAULT_GO`` exists, so a test can act on a run that is mid-training.
"""

import io
import os
import signal
import sys
import time
from pathlib import Path

import multimix.engine.checkpoint as checkpoint
import multimix.engine.trainer as trainer
from multimix.cli import main


def inject(fault: str) -> None:
    if fault.startswith("ignored-"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fault = fault[len("ignored-"):]
    name, where = fault.split("@")
    kind, count = where.split(":")
    count = int(count)
    calls = {"n": 0}

    def act() -> None:
        if name == "pause":
            Path(os.environ["FAULT_PAUSED"]).touch()
            while not Path(os.environ["FAULT_GO"]).exists():
                time.sleep(0.05)
        elif name == "SIGTERM-group":
            os.killpg(os.getpgid(0), signal.SIGTERM)
        else:
            os.kill(os.getpid(), getattr(signal, name))

    def fire() -> None:
        calls["n"] += 1
        if calls["n"] == count:
            act()

    if kind == "step":
        real_create = trainer.create_method

        def create_method(*args, **kwargs):
            method = real_create(*args, **kwargs)
            real_update = method.update

            def update(model):
                real_update(model)
                fire()
            method.update = update
            return method
        trainer.create_method = create_method
    elif kind == "save":
        real_save = checkpoint.torch.save

        class HalfThenSignal:
            def __call__(self, obj, f):
                if "last.pt" not in str(getattr(f, "name", "")):  # only the checkpoint, not interrupted.pt
                    return real_save(obj, f)
                buffer = io.BytesIO()
                real_save(obj, buffer)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                fire()
                f.write(data[len(data) // 2:])
        checkpoint.torch.save = HalfThenSignal()
    elif kind == "setup":
        real_build = trainer.build_data_and_model

        def build_data_and_model(*args, **kwargs):
            fire()
            return real_build(*args, **kwargs)
        trainer.build_data_and_model = build_data_and_model
    elif kind == "after-save":
        real = trainer.Trainer.save

        def save(self, epoch):
            real(self, epoch)
            fire()
        trainer.Trainer.save = save
    else:
        raise SystemExit(f"unknown fault {fault}")


if __name__ == "__main__":
    inject(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
