"""A short demo: train a 1-D CNN on MNIST-1D with several methods and compare test accuracy.

MNIST-1D is generated locally by the ``mnist1d`` package (no download). This is
the project's main job until the ``multimix`` command line exists; it is also a
complete example of using the library in your own training loop.

    .venv/bin/python examples/demo.py --epochs 20 --seeds 1

One seed on the default 4,000/1,000 split is a smoke test, not a benchmark:
differences below ~1 point are within seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import multimix
from multimix.models import cnn1d


def mnist1d_tensors(seed: int = 42):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    to_x = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)
    to_y = lambda a: torch.tensor(a, dtype=torch.long)
    return to_x(data["x"]), to_y(data["y"]), to_x(data["x_test"]), to_y(data["y_test"])


def train_and_test(method_name: str, seed: int, epochs: int, data, **method_kwargs) -> float:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = cnn1d(num_classes=10, channels=32)
    method = multimix.create_method(method_name, generator=torch.Generator().manual_seed(seed), **method_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = (len(x_train) + 127) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=order).split(128):
            loss = method(model, x_train[idx], y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            method.update(model)
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float().mean().item() * 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    data = mnist1d_tensors()
    runs = {
        "ERM": ("erm", {}),
        "input mixup (α=0.2)": ("mixup", {"alpha": 0.2}),
        "manifold mixup (α=2)": ("manifold_mixup", {"alpha": 2.0, "layers": (0, 1, 2, 3, 4)}),
        "MultiMix (n=1000, α=0.02)": ("multimix", {"n": 1000, "alpha": 0.02}),
        "Dense MultiMix (n=1000, α=0.02)": ("dense_multimix", {"n": 1000, "alpha": 0.02}),
    }
    print(f"MNIST-1D ({len(data[0])} train / {len(data[2])} test), 1-D CNN (32 channels), "
          f"{args.epochs} epochs, seeds 0..{args.seeds - 1}\n")
    print(f"| method | test accuracy (%) | time (s) |\n|---|---|---|")
    for label, (name, kwargs) in runs.items():
        start = time.perf_counter()
        accs = [train_and_test(name, seed, args.epochs, data, **kwargs) for seed in range(args.seeds)]
        spread = f" ± {np.std(accs, ddof=1):.2f}" if len(accs) > 1 else ""
        print(f"| {label} | {np.mean(accs):.2f}{spread} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
