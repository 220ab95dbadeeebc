"""The ``multimix`` command line: ``train``, ``bench``, ``eval``, ``speed`` and ``configs``.

``multimix bench`` with no arguments compares every method on MNIST-1D
(generated locally) over 5 seeds and writes results.{md,csv,json,png}.
``multimix train --config NAME_OR_PATH [flags]`` trains one method; flags
override the YAML recipe. ``multimix configs`` lists the bundled recipes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from .data import DATASETS
from .distributed import DistributedError
from .methods import METHODS, SelfDistillation
from .train import SCHEDULES, CheckpointError, NonFiniteLossError, TrainConfig, train

CONFIG_DIR = Path(__file__).parent / "configs"

# flag name -> key of method_args
_METHOD_FLAGS = {"alpha": "alpha", "concentration": "concentration", "n": "n", "tuple_size": "tuple_size",
                 "clean_weight": "clean_weight", "rows_per_draw": "rows_per_draw", "attention": "attention",
                 "position_weighting": "position_weighting", "pooled_weight": "pooled_weight", "layers": "layers",
                 "eta": "eta", "mixupe_version": "version", "threshold": "threshold", "base": "base",
                 "label_smoothing": "label_smoothing"}
_DISTILL_FLAGS = {"distill_momentum": "momentum", "distill_temperature": "temperature", "distill_weight": "weight",
                  "distill_warmup": "warmup_steps"}


def bundled_configs() -> List[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str) -> Dict[str, Any]:
    """A YAML recipe by bundled name (see ``multimix configs``) or by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a bundled recipe; "
                                f"bundled: {', '.join(bundled_configs())}")
    try:
        import yaml
    except ImportError as err:
        raise ImportError("YAML configs need PyYAML: pip install pyyaml") from err
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping of TrainConfig fields")
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"config {path} has unknown keys {unknown}; valid keys: {', '.join(sorted(valid))}")
    return data


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one method", description="Train one method. Flags override --config.",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="bundled recipe name or YAML path (see `multimix configs`)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default mnist1d)")
    g.add_argument("--data-dir", dest="data_dir", help="data root (ImageFolder tree with train/ and test/, or CIFAR root)")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    g.add_argument("--num-train", dest="num_train", type=int, help="training subset size")
    g.add_argument("--num-test", dest="num_test", type=int, help="test subset size")
    g.add_argument("--val-size", dest="val_size", type=int, help="examples held out from train for validation")
    g.add_argument("--image-size", dest="image_size", type=int)
    g.add_argument("--no-augment", dest="augment", action="store_false")
    g = p.add_argument_group("model and method")
    g.add_argument("--model", help="cnn1d, preact_resnet18, preact_resnet_small, resnet18..resnet152, timm:<name>")
    g.add_argument("--width", type=int, help="channels of cnn1d / first-group width of PreActResNets")
    g.add_argument("--method", help=f"one of {', '.join(METHODS)}")
    g.add_argument("--alpha", type=float, help="Beta/Dirichlet concentration α")
    g.add_argument("--num-mix", "--n", dest="n", type=int,
                   help="MultiMix: interpolated examples per batch (use --num-mix under torchrun, whose parser takes --n)")
    g.add_argument("--position-weighting", dest="position_weighting", choices=["uniform", "attention"],
                   help="Dense MultiMix: weight of each position in the dense loss")
    g.add_argument("--concentration", type=float,
                   help="MultiMix: total Dirichlet concentration A = tuple length × α (instead of --alpha)")
    g.add_argument("--rows-per-draw", dest="rows_per_draw", type=int,
                   help="MultiMix: rows of Λ filled by each Dirichlet draw (reordered; default 1)")
    g.add_argument("--pooled-weight", dest="pooled_weight", type=float,
                   help="Dense MultiMix: weight of an extra MultiMix loss on the pooled embeddings")
    g.add_argument("--tuple-size", dest="tuple_size", type=int, help="MultiMix: examples per tuple")
    g.add_argument("--clean-weight", dest="clean_weight", type=float, help="MultiMix: weight of the clean loss")
    g.add_argument("--attention", choices=["uniform", "self", "cam"], help="Dense MultiMix attention")
    g.add_argument("--layers", type=int, nargs="+", help="manifold mixup: candidate layers")
    g.add_argument("--eta", type=float, help="MixupE η")
    g.add_argument("--mixupe-version", dest="mixupe_version", type=int, choices=[3, 4])
    g.add_argument("--threshold", type=float, help="MixupE τ")
    g.add_argument("--base", choices=["mixup", "cutmix", "manifold_mixup"], help="MixupE base method")
    g.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    g.add_argument("--distill", action="store_true", help="self-distillation from an EMA teacher")
    g.add_argument("--distill-momentum", dest="distill_momentum", type=float)
    g.add_argument("--distill-temperature", dest="distill_temperature", type=float)
    g.add_argument("--distill-weight", dest="distill_weight", type=float)
    g.add_argument("--distill-warmup", dest="distill_warmup", type=int, help="steps over which the teacher's weight ramps up")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", dest="weight_decay", type=float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g = p.add_argument_group("machinery")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--no-amp", dest="amp", action="store_false")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--workers", type=int, help="data-loader worker processes")
    g.add_argument("--out-dir", dest="out_dir", help="where checkpoints, metrics and the summary go")
    g.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    g.add_argument("--stop-after-epochs", dest="stop_after_epochs", type=int,
                   help="end this invocation after this many epochs (for time-limited jobs); continue with --resume")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g = p.add_argument_group("several processes (launch with torchrun --nproc_per_node=N -m multimix -- train ...)")
    g.add_argument("--mix-scope", dest="mix_scope", choices=["local", "global"],
                   help="multimix/dense_multimix: mix within each process's batch (local, default) or over the "
                        "global batch of all processes (global)")
    g.add_argument("--dist-timeout", dest="dist_timeout", type=float,
                   help="seconds a process waits for the others before the job fails (default 600)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values.pop("command", None)
    values_given = set(values)
    data = load_config(values.pop("config")) if "config" in values else {}
    method_args = dict(data.pop("method_args", {}) or {})
    if data.get("method") not in (None, values.get("method", data.get("method"))):
        method_args = {}  # the recipe's method arguments belong to the method it names
    distill = data.pop("distill", None)
    for flag, key in _METHOD_FLAGS.items():
        if flag in values:
            method_args[key] = values.pop(flag)
    # --alpha and --concentration are two ways to set one thing: a flag replaces the recipe's other form.
    for given, other in (("alpha", "concentration"), ("concentration", "alpha")):
        if given in values_given and other not in values_given:
            method_args.pop(other, None)
    distill_overrides = {key: values.pop(flag) for flag, key in _DISTILL_FLAGS.items() if flag in values}
    if values.pop("distill", False) or distill_overrides:
        distill = {**SelfDistillation.DEFAULTS, **(distill or {}), **distill_overrides}
    data.update(values)
    return TrainConfig(**data, method_args=method_args, distill=distill).validate()


def _bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="compare methods over seeds (default: MNIST-1D, 9 methods x 5 seeds with tuned settings, about 10 minutes on 2 CPU cores)")
    p.add_argument("--out-dir", default="runs/bench", help="where results.{md,csv,json,png} go (default runs/bench)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed … first-seed + seeds − 1")
    p.add_argument("--config", help="a training recipe (bundled name or YAML path) to compare on instead of MNIST-1D; "
                                    "its method settings are ignored")
    p.add_argument("--data-dir", help="data location for --config recipes that read files")
    p.add_argument("--epochs", type=int, help="epochs per run (default 30)")
    p.add_argument("--num-train", type=int, help="training examples (default 2000)")
    p.add_argument("--num-test", type=int, help="test examples (default 10000)")
    p.add_argument("--val-size", type=int, help="validation examples held out of the training pool, used by --tune (default: "
                                                 "5000 on MNIST-1D, where they are generated beside the training set; "
                                                 "the recipe's with --config)")
    p.add_argument("--methods", help="comma-separated labels or method names to keep (default: all)")
    p.add_argument("--tune", action="store_true",
                   help="first select each method's settings on the validation split (same number of candidates "
                        "and tuning seeds for every method), then compare the chosen settings on the test split")
    p.add_argument("--tune-seeds", type=int, default=2, help="seeds per tuning candidate (default 2)")
    p.add_argument("--attack-limit", type=int, default=1000, help="test examples attacked per run (default 1000)")
    return p


def _keep(items, names: Optional[str], label_of, method_of, what: str):
    if not names:
        return list(items)
    keep = [m.strip() for m in names.split(",") if m.strip()]
    valid = {label_of(e) for e in items} | {method_of(e) for e in items}
    bad = [m for m in keep if m not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid: {', '.join(sorted(valid))}")
    return [e for e in items if label_of(e) in keep or method_of(e) in keep]


def _bench(args) -> int:
    from .bench import DEFAULT_CONFIG, DEFAULT_ENTRIES, run_bench

    base = DEFAULT_CONFIG
    if args.config:
        recipe = {k: v for k, v in load_config(args.config).items() if k not in ("method", "method_args", "distill")}
        base = TrainConfig(**{**recipe, "progress": False, "checkpoint": False})
    overrides = {k: v for k, v in (("epochs", args.epochs), ("num_train", args.num_train), ("num_test", args.num_test),
                                   ("val_size", args.val_size), ("data_dir", args.data_dir)) if v is not None}
    base = replace(base, **overrides)
    base = replace(base, eval_every=base.epochs).validate()  # evaluate once, at the end of each run
    setting = (f"{base.dataset} ({base.num_train} train / {base.val_size} validation / {base.num_test} test, "
               f"{base.model} width {base.width}, {base.epochs} epochs)")
    if args.tune:
        from .tune import DEFAULT_GRID, tune

        grid = _keep(DEFAULT_GRID, args.methods, lambda s: s.label, lambda s: s.method, "bench methods")
        print(f"multimix bench --tune: selecting settings of {len(grid)} methods on the validation split, "
              f"{args.tune_seeds} seeds per candidate, {setting}", flush=True)
        entries, _ = tune(Path(args.out_dir), base, seeds=args.tune_seeds, grid=grid,
                          log=lambda line: print(line, flush=True))
    else:
        entries = _keep(DEFAULT_ENTRIES, args.methods, lambda e: e[0], lambda e: e[1], "bench methods")
    print(f"multimix bench: {len(entries)} methods × {args.seeds} seeds on {setting}", flush=True)
    results = run_bench(Path(args.out_dir), seeds=args.seeds, first_seed=args.first_seed, entries=entries, base=base,
                        attack_limit=args.attack_limit, log=lambda line: print(line, flush=True))
    from .bench import evaluation_table, markdown_table

    print("\n" + markdown_table(results) + "\n\n" + evaluation_table(results))
    print(f"\nwrote {args.out_dir}/results.md, results.csv, results.json, results.png, embeddings.png "
          f"({results['wall_time_s']:.0f} s)")
    return 0


def _eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="robustness, calibration, OOD detection and embedding analysis of a checkpoint")
    p.add_argument("checkpoint", help="a last.pt written by `multimix train`")
    p.add_argument("--out-dir", help="where eval.json, reliability.png and embeddings.png go (default: beside the checkpoint)")
    p.add_argument("--data-dir", help="override the data location stored in the checkpoint's config")
    p.add_argument("--eps", type=float, help="L∞ budget (default 8/255 for images, the same share of the range for MNIST-1D)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--attack-limit", type=int, default=2000, help="test examples attacked (default 2000)")
    p.add_argument("--ood", default="shuffled", help="shuffled (default), cifar10, cifar100, or imagefolder:PATH")
    p.add_argument("--projection", choices=["pca", "tsne"], default="pca")
    p.add_argument("--device", default="auto")
    return p


def _ood_dataset(spec: str, config, splits):
    from .data import ShuffledPositions, load_dataset

    if spec == "shuffled":
        return ShuffledPositions(splits.test)
    if spec in ("cifar10", "cifar100"):
        return load_dataset(spec, num_test=config.num_test).test
    if spec.startswith("imagefolder:"):
        return load_dataset("imagefolder", data_dir=spec.split(":", 1)[1], image_size=config.image_size,
                            num_test=config.num_test).test
    raise ValueError(f"unknown --ood {spec!r}; valid: shuffled, cifar10, cifar100, imagefolder:PATH")


def _eval(args) -> int:
    import json

    from . import metrics
    from .evaluation import report
    from .train import _device, load_trained

    device = _device(args.device)
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    config, splits, model = load_trained(args.checkpoint, device=device, **overrides)
    ood = _ood_dataset(args.ood, config, splits)
    result = report(model, splits, ood=ood, eps=args.eps, pgd_steps=args.pgd_steps, attack_limit=args.attack_limit,
                    device=device)
    predictions = result.pop("_predictions")
    out_dir = Path(args.out_dir or Path(args.checkpoint).parent / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    result.update({"checkpoint": str(args.checkpoint), "ood": args.ood, "method": config.method})
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    probs = torch.softmax(predictions["logits"], 1)
    metrics.plot_reliability_diagram(probs, predictions["labels"], out_dir / "reliability.png",
                                     title=f"{config.method} on {config.dataset}")
    metrics.plot_embeddings({config.method: (predictions["embeddings"], predictions["labels"])},
                            out_dir / "embeddings.png", method=args.projection)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"wrote {out_dir}/eval.json, reliability.png, embeddings.png")
    return 0


def _speed_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("speed", help="interpolated examples per second vs n: MultiMix against input mixup")
    p.add_argument("--out-dir", default="runs/speed")
    p.add_argument("--model", default="cnn1d", help="cnn1d (MNIST-1D shape) or preact_resnet18/_small (32x32 images)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ns", type=int, nargs="+", default=[10, 100, 1000, 10_000, 100_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-mixup-seconds", type=float, default=20.0)
    p.add_argument("--device", default="auto")
    return p


def _speed(args) -> int:
    import json

    from .speed import measure_speed, plot_speed
    from .train import _device

    shape, classes = ((1, 40), 10) if args.model == "cnn1d" else ((3, 32, 32), 100)
    rows = measure_speed(model_name=args.model, width=args.width, input_shape=shape, num_classes=classes,
                         batch_size=args.batch_size, ns=args.ns, repeats=args.repeats,
                         max_mixup_seconds=args.max_mixup_seconds, device=_device(args.device),
                         log=lambda line: print(line, flush=True))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(rows, indent=2))
    plot_speed(rows, out / "speed.png", title=f"{args.model} (width {args.width}), batch {args.batch_size}")
    print(f"wrote {out}/speed.json, speed.png")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="multimix", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _bench_parser(sub)
    _eval_parser(sub)
    _speed_parser(sub)
    sub.add_parser("configs", help="list the bundled YAML recipes")
    args = parser.parse_args(argv)
    try:
        if args.command == "configs":
            print("\n".join(bundled_configs()))
            return 0
        if args.command == "bench":
            return _bench(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "speed":
            return _speed(args)
        summary = train(config_from_args(args))
        final = summary["final"]
        if "test_accuracy" in final and summary.get("rank", 0) == 0:
            print(f"test accuracy {final['test_accuracy']:.2f}% after {summary['epochs_completed']} epochs "
                  f"({summary['status']}); outputs in {summary['config']['out_dir']}")
        return 130 if summary["status"] == "interrupted" else 0
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, CheckpointError,
            NonFiniteLossError, DistributedError) as err:
        print(f"multimix {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
