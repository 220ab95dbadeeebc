"""MultiMix in a timm-style training script: a model from ``timm.create_model``, timm's transforms and optimiser.

    pip install 'multimix[vision]'
    python examples/timm_train.py --data-dir DIR --model resnet18 --method multimix --epochs 10
    python examples/timm_train.py --data-dir DIR --model vit_tiny_patch16_224 --img-size 32 --method dense_multimix

DIR is an ImageFolder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), e.g. the CIFAR-10 JPEG copy.
``multimix.models.adapt`` puts the timm model under the model contract through its own ``forward_features`` and
``forward_head(pre_logits=True)``: MultiMix mixes the embedding timm's head classifies (a ViT's class token), Dense
MultiMix the feature map or the patch tokens. The model stays a plain timm model for evaluation and saving.
"""

from __future__ import annotations

import argparse
import time

import timm
import timm.data
import timm.optim
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import multimix


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="ImageFolder tree with train/ and test/")
    p.add_argument("--model", default="resnet18", help="a timm model name (created with pretrained=False)")
    p.add_argument("--method", default="multimix", choices=list(multimix.METHODS))
    p.add_argument("--num-mix", dest="n", type=int, default=1000,
                   help="interpolated examples per step (multimix, dense_multimix)")
    p.add_argument("--distill", action="store_true", help="self-distillation from an EMA teacher")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def evaluate(model: torch.nn.Module, loader: DataLoader) -> float:
    """Accuracy (%) of the plain timm model."""
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * right / total


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    size = (3, args.img_size, args.img_size)
    train_set = ImageFolder(f"{args.data_dir}/train", timm.data.create_transform(size, is_training=True))
    test_set = ImageFolder(f"{args.data_dir}/test", timm.data.create_transform(size))
    num_classes = len(train_set.classes)
    extra = {"img_size": args.img_size} if "vit" in args.model else {}  # patch models are built for one size
    model = timm.create_model(args.model, pretrained=False, num_classes=num_classes, **extra)

    mixable = multimix.models.adapt(model)  # shares the parameters: training it trains `model`
    kwargs = {"n": args.n} if args.method in ("multimix", "dense_multimix") else {}
    distill = multimix.SelfDistillation(mixable, warmup_steps=50) if args.distill else None
    method = multimix.create_method(args.method, distill=distill, **kwargs)

    optimizer = timm.optim.create_optimizer_v2(model, opt="sgd", lr=args.lr, momentum=0.9,
                                               weight_decay=args.weight_decay)  # no decay on norms and biases
    method.attach(optimizer, mixable)  # the teacher (if any) moves once per optimizer.step()
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader))
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for x, y in loader:
            loss = method(mixable, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}", flush=True)
    accuracy = evaluate(model, DataLoader(test_set, batch_size=256))
    print(f"{args.model} + {args.method}: test accuracy {accuracy:.1f}% ({time.perf_counter() - start:.0f} s)")
    return {"test_accuracy": accuracy, "steps": method.steps, "final_loss": loss.item(),
            "teacher_updates": distill.updates if distill is not None else None}


if __name__ == "__main__":
    main()
