"""The ``multimix`` command line: ``train``, ``bench``, ``eval``, ``speed`` and ``configs``.

``multimix bench`` with no arguments compares every method on MNIST-1D
(generated locally) over 5 seeds and writes results.{md,csv,json,png}.
``multimix train --config NAME_OR_PATH [flags]`` trains one method; flags
override the YAML recipe. ``multimix configs`` lists the bundled recipes.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import signal
import sys
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from .engine import (CheckpointError, DistributedError, NonFiniteLossError, TrainConfig, Trainer, bundled_configs,
                     load_recipe, resolve_device)
from .engine.budget import Estimate, check_fits, check_memory, step_estimate
from .engine.config import MAX_SEED
from .engine.processes import check_writable, run_in_processes
from .engine.signals import Interrupted, exit_status
from .argtypes import MAX_MESSAGE_CHARS, OneLineParser, finite_at_least, int_at_least, parse_float, parse_int
from .checks import brief
from .methods import METHODS, SelfDistillation, distill_settings, method_settings, setting_help
from .methods.settings import Setting

# Flag spellings that differ from the setting's name (torchrun's parser swallows --n; MixupE's version).
FLAG_NAMES = {"n": ["--num-mix", "--n"], "version": ["--mixupe-version"]}
DISTILL_FLAG_NAMES = {"warmup_steps": ["--distill-warmup", "--distill-warmup-steps"]}
DISTILL_PREFIX = "distill_"


class UserError(Exception):
    """Bad input from the command line, a recipe or the data: reported in one line with exit status 2."""


# Known failures that are the user's to fix, whatever the phase: one line, exit status 2.
USER_ERRORS = (UserError, OSError, ImportError, CheckpointError, NonFiniteLossError, DistributedError)


@contextlib.contextmanager
def checking_input() -> Iterator[None]:
    """Inside this block (parsing, validation, set-up) a ``ValueError``/``TypeError`` is the user's input."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from err


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {brief(text)}")


def argparse_kwargs(annotation: Any) -> Dict[str, Any]:
    """``type``/``choices``/``nargs`` for a flag of this type annotation (Optional, Literal, lists, bool, numbers)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        literal = [a for a in options if typing.get_origin(a) is typing.Literal]
        return argparse_kwargs(literal[0] if literal else options[0])
    if origin is typing.Literal:
        return {"type": type(args[0]), "choices": list(args)}
    if origin in (list, tuple, collections.abc.Sequence):
        return {**argparse_kwargs(args[0] if args else str), "nargs": "+"}
    if annotation is bool:
        return {"type": parse_bool, "metavar": "{true,false}"}
    return {"type": {int: parse_int, float: parse_float}.get(annotation, str)}


def all_method_settings() -> Dict[str, Setting]:
    """Every method's settings by name (a name shared by several methods has one meaning)."""
    found: Dict[str, Setting] = {}
    for method in METHODS:
        for name, setting in method_settings(method).items():
            found.setdefault(name, setting)
    return found


def train_parser(sub) -> argparse.ArgumentParser:
    """``multimix train``: a flag per TrainConfig field, per method setting and per distillation setting."""
    p = sub.add_parser("train", help="train one method", description="Train one method. Flags override --config.",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="bundled recipe name or YAML path (see `multimix configs`)")
    groups: Dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("method_args", "distill"):
            continue
        group = groups.setdefault(f.metadata["group"], p.add_argument_group(f.metadata["group"]))
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        annotation = typing.get_type_hints(TrainConfig)[f.name]
        if annotation is bool and f.default is True:
            group.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                               help=f"turn off: {help_text}")
        elif annotation is bool:
            group.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, help=help_text, **argparse_kwargs(annotation))
    g = p.add_argument_group("method settings (each applies to the methods named; see multimix.methods)")
    for name, setting in all_method_settings().items():
        g.add_argument(*FLAG_NAMES.get(name, ["--" + name.replace("_", "-")]), dest=name,
                       help=setting_help(name), **argparse_kwargs(setting.annotation))
    g = p.add_argument_group("self-distillation (an EMA teacher's soft targets, interpolated like hard ones)")
    g.add_argument("--distill", action="store_true", help="turn on self-distillation (defaults: "
                   + ", ".join(f"{k} {v}" for k, v in SelfDistillation.DEFAULTS.items()) + ")")
    for name, setting in distill_settings().items():
        g.add_argument(*DISTILL_FLAG_NAMES.get(name, ["--distill-" + name.replace("_", "-")]),
                       dest=DISTILL_PREFIX + name, help=setting.help, **argparse_kwargs(setting.annotation))
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the recipe (if any), then the flags; checked before anything runs."""
    values = vars(args).copy()
    values.pop("command", None)
    given = set(values)
    data = load_recipe(values.pop("config")) if "config" in values else {}
    method_args = dict(data.pop("method_args", {}) or {})
    if data.get("method") not in (None, values.get("method", data.get("method"))):
        method_args = {}  # the recipe's method arguments belong to the method it names
    distill = data.pop("distill", None)
    for name in all_method_settings():
        if name in values:
            method_args[name] = values.pop(name)
    # --alpha and --concentration are two ways to set one thing: a flag replaces the recipe's other form.
    for flag, other in (("alpha", "concentration"), ("concentration", "alpha")):
        if flag in given and other not in given:
            method_args.pop(other, None)
    overrides = {name[len(DISTILL_PREFIX):]: values.pop(name) for name in list(values) if name.startswith(DISTILL_PREFIX)}
    if values.pop("distill", False) or overrides:
        distill = {**SelfDistillation.DEFAULTS, **(distill or {}), **overrides}
    data.update(values)
    return TrainConfig(**data, method_args=method_args, distill=distill).validate()


def bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="compare methods over seeds (default: MNIST-1D, 9 methods x 5 seeds with tuned "
                                     "settings, about 10 minutes on 2 CPU cores)")
    p.add_argument("--out-dir", default="runs/bench", help="where results.{md,csv,json,png} go (default runs/bench)")
    p.add_argument("--seeds", type=int_at_least(1), default=5)
    p.add_argument("--first-seed", type=int_at_least(0, MAX_SEED), default=0,
                   help="seeds run are first-seed … first-seed + seeds − 1")
    p.add_argument("--config", help="a training recipe (bundled name or YAML path) to compare on instead of MNIST-1D; "
                                    "its method settings are ignored")
    p.add_argument("--data-dir", help="data location for --config recipes that read files")
    p.add_argument("--epochs", type=int_at_least(1), help="epochs per run (default 30)")
    p.add_argument("--num-train", type=int_at_least(1), help="training examples (default 2000)")
    p.add_argument("--num-test", type=int_at_least(1), help="test examples (default 10000)")
    p.add_argument("--val-size", type=int_at_least(0),
                   help="validation examples held out of the training pool, used by --tune "
                                                 "(default: 5000 on MNIST-1D, where they are generated beside the "
                                                 "training set; the recipe's with --config)")
    p.add_argument("--methods", help="comma-separated labels or method names to keep (default: all)")
    p.add_argument("--entries", help="a YAML file of bench entries, or a bundled name in configs/bench (default: "
                                     "entries, the MNIST-1D-tuned settings of every method)")
    p.add_argument("--grid", help="a YAML file of tuning candidates for --tune, or a bundled name in configs/bench "
                                  "(default: grid)")
    p.add_argument("--tune", action="store_true",
                   help="first select each method's settings on the validation split (same number of candidates "
                        "and tuning seeds for every method), then compare the chosen settings on the test split")
    p.add_argument("--tune-seeds", type=int_at_least(1), default=2, help="seeds per tuning candidate (default 2)")
    p.add_argument("--attack-limit", type=int_at_least(1), default=1000,
                   help="test examples attacked per run (default 1000)")
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="run even when a run's data or training step is estimated not to fit in memory")
    g = p.add_argument_group("sweep (every run is recorded in OUT_DIR/runs; the same command again runs only the "
                             "missing ones)")
    g.add_argument("--jobs", type=int_at_least(1), help="runs at a time on this machine, each in its own process (default: one "
                                            "per usable CPU core, or per GPU when the runs use CUDA)")
    g.add_argument("--threads-per-run", type=int_at_least(1), help="torch threads of each local run (default 1, as with --ray "
                                                       "--cpus-per-run 1, so that results do not depend on --jobs)")
    g.add_argument("--ray", metavar="ADDRESS", help="send the runs to the running Ray cluster at ADDRESS (host:port, "
                                                    "or auto) instead (pip install 'multimix[cluster]')")
    g.add_argument("--cpus-per-run", type=finite_at_least(0), default=1, help="with --ray: CPUs reserved per run (default 1)")
    g.add_argument("--gpus-per-run", type=finite_at_least(0), default=0, help="with --ray: GPUs reserved per run (default 0)")
    g.add_argument("--fresh", action="store_true", help="delete OUT_DIR's run records first and run everything again")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is shown on stderr when stderr is a terminal)")
    return p


def keep_methods(items, names: Optional[str], what: str):
    """The items whose label or method is in the comma-separated ``names`` (all when ``names`` is empty)."""
    if not names:
        return list(items)
    keep = [m.strip() for m in names.split(",") if m.strip()]
    valid = {e.label for e in items} | {e.method for e in items}
    bad = [m for m in keep if m not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid: {', '.join(sorted(valid))}")
    return [e for e in items if e.label in keep or e.method in keep]


def run_bench_command(args) -> int:
    """``multimix bench``: its sweep holds the output folder's lock, so a second bench into the same folder is
    refused."""
    return bench_command(args)


def sweep_executor(args, base: TrainConfig):
    """The executor ``--ray`` / ``--jobs`` / ``--threads-per-run`` ask for (checked before any work)."""
    from .experiments.executors import LocalExecutor, RayExecutor, default_jobs

    if args.ray:
        if args.jobs is not None or args.threads_per_run is not None:
            raise ValueError("--jobs and --threads-per-run are for runs on this machine; with --ray use "
                             "--cpus-per-run and --gpus-per-run")
        return RayExecutor(args.ray, args.cpus_per_run, args.gpus_per_run)
    gpus = list(range(torch.cuda.device_count())) if resolve_device(base.device).type == "cuda" else []
    jobs = args.jobs or (len(gpus) if gpus else default_jobs(1 << 30))
    return LocalExecutor(jobs, args.threads_per_run or 1, gpus)


def bench_command(args) -> int:
    from .experiments.bench import (DEFAULT_CONFIG, evaluate_once_unless_best_val, evaluation_table, markdown_table,
                                    missing_note, run_bench)
    from .experiments.entries import ENTRIES_PATH, GRID_PATH, bench_file, load_entries, load_grid
    from .experiments.executors import LocalExecutor
    from .experiments.sweep import Sweep
    from .experiments.tune import tune

    with checking_input():
        check_writable(Path(args.out_dir))
        if args.first_seed + args.seeds - 1 > MAX_SEED:
            raise ValueError(f"the last seed, --first-seed + --seeds - 1, must be at most {MAX_SEED}, got "
                             f"{args.first_seed + args.seeds - 1}")
        base = DEFAULT_CONFIG
        if args.config:
            # The method and what goes with it (a teacher, unlabelled examples) are each entry's own choice.
            entry_keys = ("method", "method_args", "distill", "unlabelled_batch")
            recipe = {k: v for k, v in load_recipe(args.config).items() if k not in entry_keys}
            base = TrainConfig(**{**recipe, "progress": False, "checkpoint": False})
        overrides = {k: v for k, v in (("epochs", args.epochs), ("num_train", args.num_train),
                                       ("num_test", args.num_test), ("val_size", args.val_size),
                                       ("data_dir", args.data_dir)) if v is not None}
        if not args.memory_check:
            overrides["memory_check"] = False
        base = replace(base, **overrides)
        base = evaluate_once_unless_best_val(base).validate()
        if args.tune:
            grid = keep_methods(load_grid(bench_file(args.grid) if args.grid else GRID_PATH), args.methods, "bench methods")
            if base.val_size < 1:
                raise ValueError(f"--tune selects on a validation split: --val-size must be >= 1, got {base.val_size}")
        else:
            entries = keep_methods(load_entries(bench_file(args.entries) if args.entries else ENTRIES_PATH), args.methods,
                                   "bench methods")
        # every run's data and step must fit: refused here, before the first run, not in the middle of the bench
        runs = ([(spec.method, {**spec.fixed, **margs}, distill, spec.config) for spec in grid
                 for margs, distill in spec.candidates] if args.tune
                else [(e.method, e.method_args, e.distill, e.config) for e in entries])
        executor = sweep_executor(args, base)
        # the local workers share this machine's memory (Ray places its runs by the resources asked for)
        at_once = min(executor.jobs, len(runs) * args.seeds) if isinstance(executor, LocalExecutor) else 1
        for method, method_args, distill, config in runs:
            check_memory(replace(base, method=method, method_args=method_args, distill=distill, **config),
                         runs_at_once=at_once)
    size = lambda n: "all" if n is None else n  # noqa: E731
    setting = (f"{base.dataset} ({size(base.num_train)} train / {base.val_size} validation / {size(base.num_test)} "
               f"test, {base.model} width {base.width or 'default'}, {base.epochs} epochs)")
    log = lambda line: print(line, flush=True)  # noqa: E731
    with Sweep(Path(args.out_dir), executor, fresh=args.fresh, progress=args.progress, log=log) as sweep:
        if args.tune:
            print(f"multimix bench --tune: selecting settings of {len(grid)} methods on the validation split, "
                  f"{args.tune_seeds} seeds per candidate, {setting}", flush=True)
            entries, _ = tune(Path(args.out_dir), base, seeds=args.tune_seeds, grid=grid, log=log, sweep=sweep)
        print(f"multimix bench: {len(entries)} methods × {args.seeds} seeds on {setting}", flush=True)
        results = run_bench(Path(args.out_dir), seeds=args.seeds, first_seed=args.first_seed, entries=entries,
                            base=base, attack_limit=args.attack_limit, log=log, sweep=sweep)
    missing = missing_note(results)
    print("\n" + markdown_table(results) + ("\n\n" + missing if missing else "") + "\n\n" + evaluation_table(results))
    print(f"\nwrote {args.out_dir}/results.md, results.csv, results.json, results.png, embeddings.png "
          f"({results['wall_time_s']:.0f} s)")
    if results.get("missing"):  # a table with holes is written, but a script must not take it for a complete one
        print(f"multimix bench: {len(results['missing'])} run(s) failed or missing (named above); rerun the same "
              "command to retry them", file=sys.stderr)
        return 1
    return 0


def eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="robustness, calibration, OOD detection and embedding analysis of a checkpoint")
    p.add_argument("checkpoint", help="a last.pt written by `multimix train`")
    p.add_argument("--out-dir", help="where eval.json, reliability.png and embeddings.png go (default: beside the checkpoint)")
    p.add_argument("--data-dir", help="override the data location stored in the checkpoint's config")
    p.add_argument("--eps", type=finite_at_least(0.0),
                   help="L∞ budget (default 8/255 for images, the same share of the range for MNIST-1D)")
    p.add_argument("--pgd-steps", type=int_at_least(1), default=10)
    p.add_argument("--attack-limit", type=int_at_least(1), default=2000, help="test examples attacked (default 2000)")
    p.add_argument("--ood", default="shuffled", help="shuffled (default), cifar10, cifar100, or imagefolder:PATH")
    p.add_argument("--projection", choices=["pca", "tsne"], default="pca")
    p.add_argument("--device", default="auto")
    return p


def ood_dataset(spec: str, config, splits):
    """The out-of-distribution set named by ``--ood``; None for ``shuffled``, the report's default (where it applies).

    A set of images is refused unless its inputs have the shape of the checkpoint's (before it is read, where
    the checkpoint's data are not images).
    """
    from .data import load_dataset

    if spec == "shuffled":
        return None
    if spec not in ("cifar10", "cifar100") and not spec.startswith("imagefolder:"):
        raise ValueError(f"unknown --ood {brief(spec)}; valid: shuffled, cifar10, cifar100, imagefolder:PATH")
    if len(splits.input_shape) != 3 or not splits.input_dtype.is_floating_point:
        raise ValueError(f"--ood {brief(spec)} is a set of images; the examples of {config.dataset} have shape "
                         f"{tuple(splits.input_shape)}: use --ood shuffled")
    if spec.startswith("imagefolder:"):
        other = load_dataset("imagefolder", data_dir=spec.split(":", 1)[1], image_size=config.image_size,
                             num_test=config.num_test)
    else:
        other = load_dataset(spec, num_test=config.num_test)
    if tuple(other.input_shape) != tuple(splits.input_shape):
        raise ValueError(f"--ood {brief(spec)} has inputs of shape {tuple(other.input_shape)}; the checkpoint's "
                         f"model takes {tuple(splits.input_shape)} ({config.dataset})")
    return other.test


def run_eval_command(args) -> int:
    from .engine import load_trained
    from .engine.checkpoint import write_json_atomic
    from .evaluation.plots import plot_embeddings, plot_reliability_diagram
    from .evaluation.report import inapplicable, report

    with checking_input():
        device = resolve_device(args.device)
        overrides = {"data_dir": args.data_dir} if args.data_dir else {}
        config, splits, model = load_trained(args.checkpoint, device=device, **overrides)
        ood = ood_dataset(args.ood, config, splits)
    out_dir = Path(args.out_dir or Path(args.checkpoint).parent / "eval")
    check_writable(out_dir)  # before the evaluation, not after it
    skipped = inapplicable(splits, ood)
    if skipped:  # said before the evaluation starts
        print(f"eval: skipped for {config.dataset}: " + ", ".join(f"{name} ({why})" for name, why in skipped.items()),
              flush=True)
    result = report(model, splits, ood=ood, eps=args.eps, pgd_steps=args.pgd_steps, attack_limit=args.attack_limit,
                    device=device)
    predictions = result.pop("_predictions")
    result.update({"checkpoint": str(args.checkpoint), "ood": args.ood, "method": config.method})
    write_json_atomic({**result, "skipped": skipped}, out_dir / "eval.json")  # strict JSON: NaN is null
    probs = torch.softmax(predictions["logits"], 1)
    plot_reliability_diagram(probs, predictions["labels"], out_dir / "reliability.png",
                             title=f"{config.method} on {config.dataset}")
    plot_embeddings({config.method: (predictions["embeddings"], predictions["labels"])},
                    out_dir / "embeddings.png", method=args.projection)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"wrote {out_dir}/eval.json, reliability.png, embeddings.png")
    return 0


def speed_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("speed", help="step time vs n, interleaved: ERM, MultiMix, Dense MultiMix, input mixup")
    p.add_argument("--out-dir", default="runs/speed")
    p.add_argument("--model", default="cnn1d", help="cnn1d (MNIST-1D shape) or preact_resnet18/_small (32x32 images)")
    p.add_argument("--width", type=int_at_least(1), default=32)
    p.add_argument("--batch-size", type=int_at_least(1), default=128)
    p.add_argument("--ns", type=int_at_least(1), nargs="+", default=[10, 100, 1000, 10_000, 100_000])
    p.add_argument("--repeats", type=int_at_least(1), default=3)
    p.add_argument("--max-mixup-seconds", type=finite_at_least(0.0), default=20.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock, or the process's CPU time (CPU only; for machines shared with other jobs)")
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="measure even when the largest n is estimated not to fit in memory")
    return p


def run_speed_command(args) -> int:
    import json

    from .experiments.speed import format_speed_table, measure_speed, plot_speed

    with checking_input():
        device = resolve_device(args.device)
        if args.clock == "cpu" and torch.device(device).type != "cpu":
            raise ValueError(f"--clock cpu measures CPU time and needs --device cpu, got {device}")
        shape, classes = ((1, 40), 10) if args.model == "cnn1d" else ((3, 32, 32), 100)
        if args.memory_check:  # the largest n's costliest step (Dense MultiMix's), before any is measured
            steps = [step_estimate(model=args.model, input_shape=shape, num_classes=classes, batch=args.batch_size,
                                   width=args.width, method=method, method_args={"n": max(args.ns)}, device=device)
                     for method in ("multimix", "dense_multimix")]
            step = max(steps, key=lambda step: step.total)
            # the floors store Λ: one (n, m) per n for the mixing products, two more of the largest while timed
            floors = 4.0 * args.batch_size * (sum(args.ns) + 2 * max(args.ns))
            cause = f"n={max(args.ns)}"
            check_fits(Estimate({**step.parts, cause: step.parts.get(cause, 0.0) + floors}, step.work), device,
                       hint="pass --no-memory-check to try anyway")
        check_writable(Path(args.out_dir))  # before the measurements, not after them
    rows = measure_speed(model_name=args.model, width=args.width, input_shape=shape, num_classes=classes,
                         batch_size=args.batch_size, ns=args.ns, repeats=args.repeats,
                         max_mixup_seconds=args.max_mixup_seconds, device=device, clock=args.clock,
                         log=lambda line: print(line, flush=True))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(rows, indent=2))
    plot_speed(rows, out / "speed.png", title=f"{args.model} (width {args.width}), batch {args.batch_size}")
    print(format_speed_table(rows))
    print(f"wrote {out}/speed.json, speed.png")
    return 0


def run_train_command(args) -> int:
    with checking_input():
        config = config_from_args(args)

    def run(device) -> Dict[str, Any]:
        trainer = Trainer(config, device)
        with checking_input():  # data, method and checkpoint are checked here, before training
            trainer.prepare()
        return trainer.run()

    summary = run_in_processes(config, run)
    final = summary["final"]
    if "test_accuracy" in final and summary.get("rank", 0) == 0:
        print(f"test accuracy {final['test_accuracy']:.2f}% after {summary['epochs_completed']} epochs "
              f"({summary['status']}); outputs in {summary['config']['out_dir']}")
        chosen = summary.get("selected", {})
        if summary["config"].get("select") == "best_val" and "test_accuracy" in chosen:
            print(f"test accuracy {chosen['test_accuracy']:.2f}% at epoch {chosen['epoch']}, the best validation "
                  f"accuracy ({chosen['val_accuracy']:.2f}%)")
    if summary["status"] == "interrupted":
        return exit_status(getattr(signal, summary.get("signal", "SIGINT")))
    return 0


COMMANDS = {"train": run_train_command, "bench": run_bench_command, "eval": run_eval_command,
            "speed": run_speed_command}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``multimix`` command; returns the exit status (2 for the user's errors, in one line).

    An unexpected exception (a bug) propagates with its traceback.
    """
    parser = OneLineParser(prog="multimix", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser(sub)
    bench_parser(sub)
    eval_parser(sub)
    speed_parser(sub)
    sub.add_parser("configs", help="list the bundled YAML recipes")
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a flag refused in one line (2)
        return done.code if isinstance(done.code, int) else 2
    if args.command == "configs":
        print("\n".join(bundled_configs()))
        return 0
    try:
        return COMMANDS[args.command](args)
    except Interrupted as stop:  # bench/tune: a run was stopped by a signal; the runs before it are on disk
        print(f"multimix {args.command}: stopped by {stop.name}", file=sys.stderr)
        return exit_status(stop.signum)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a run's handlers: out at once, in one line
        print(f"multimix {args.command}: stopped by SIGINT", file=sys.stderr)
        return exit_status(signal.SIGINT)
    except USER_ERRORS as err:
        message = str(err).replace("\r", " ").replace("\n", " ")[:MAX_MESSAGE_CHARS]  # one bounded line
        print(f"multimix {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
