"""MultiMix with self-distillation in a PyTorch Lightning loop, on MNIST-1D (generated locally, no download).

    pip install 'multimix[lightning,data]'
    python examples/lightning_mnist1d.py --epochs 20
    python examples/lightning_mnist1d.py --devices 2 --strategy ddp --mix-scope global   # 2 CPU processes (gloo)

The whole integration is ``MethodMixin`` and one line of ``training_step``; the method (with its EMA teacher) is a
submodule, so Lightning checkpoints, restores, moves and casts it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import multimix
from multimix.data import load_dataset
from multimix.integrations.lightning import MethodMixin


class LitMultiMix(MethodMixin, L.LightningModule):
    """A 1-D CNN trained with MultiMix and self-distillation; ``training_step`` is one line."""

    def __init__(self, n: int = 256, mix_scope: str = "local", lr: float = 0.1, width: int = 16,
                 warmup_steps: int = 20):
        super().__init__()
        self.save_hyperparameters()
        self.model = multimix.models.cnn1d(num_classes=10, channels=width)
        distill = multimix.SelfDistillation(self.model, warmup_steps=warmup_steps)
        self.method = multimix.create_method("multimix", n=n, mix_scope=mix_scope, distill=distill)

    def training_step(self, batch, batch_idx):
        return self.mixed_loss(batch)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.log("val_loss", F.cross_entropy(logits.float(), y), sync_dist=True)
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean() * 100, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.hparams.lr, momentum=0.9)


def accuracy(model: torch.nn.Module, dataset, batch_size: int = 512) -> float:
    """Test accuracy (%) of ``model`` on ``dataset``."""
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            right += (model(x.to(next(model.parameters()).dtype)).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * right / total


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=500, help="validation examples generated beside (0: none)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-mix", dest="n", type=int, default=256, help="MultiMix's interpolated examples per step")
    p.add_argument("--width", type=int, default=16, help="channels of the 1-D CNN")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--mix-scope", default="local", choices=["local", "global"])
    p.add_argument("--precision", default="32-true")
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimiser step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", help="write this process's result (JSON) to RECORD.<rank>.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    splits = load_dataset("mnist1d", num_train=args.num_train, num_test=args.num_test, num_val=args.val_size)
    lit = LitMultiMix(n=args.n, mix_scope=args.mix_scope, width=args.width,
                      warmup_steps=min(20, args.epochs * (args.num_train // args.batch_size) // args.accumulate))
    draws = []  # Λ of the first step of this process: its columns (the batch mixed) and a checksum
    sample_lam = lit.method.sample_lam

    def recording(m, device):
        lam = sample_lam(m, device)
        if not draws:
            draws.append({"columns": lam.shape[1], "sum_of_squares": float((lam.double() ** 2).sum())})
        return lam

    lit.method.sample_lam = recording
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices, strategy=args.strategy,
                        precision=args.precision, accumulate_grad_batches=args.accumulate, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(splits.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val = DataLoader(splits.val, batch_size=512) if splits.val is not None else None
    trainer.fit(lit, loader, val)
    result = {"rank": trainer.global_rank, "global_step": trainer.global_step, "method_steps": lit.method.steps,
              "teacher_updates": lit.method.distill.updates, "first_draw": draws[0],
              "weights": [float(p.detach().double().sum()) for p in lit.model.parameters()],
              "teacher": [float(p.detach().double().sum()) for p in lit.method.distill.teacher.parameters()],
              "test_accuracy": accuracy(lit.model, splits.test),
              "teacher_test_accuracy": accuracy(lit.method.distill.teacher, splits.test)}
    if args.record:
        Path(f"{args.record}.{trainer.global_rank}.json").write_text(json.dumps(result))
    if trainer.is_global_zero:
        print(f"test accuracy {result['test_accuracy']:.1f}% (teacher {result['teacher_test_accuracy']:.1f}%) after "
              f"{trainer.global_step} optimiser steps")
    return result


if __name__ == "__main__":
    main()
