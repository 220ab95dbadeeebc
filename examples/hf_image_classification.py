"""MultiMix in the Hugging Face Transformers Trainer: a small ViT built from its config on an ImageFolder tree.

    pip install 'multimix[hf,vision]'
    python examples/hf_image_classification.py --data-dir DIR --method multimix
    python examples/hf_image_classification.py --data-dir DIR --method erm      # the plain Trainer, to compare
    torchrun --nproc_per_node 2 examples/hf_image_classification.py --data-dir DIR   # 2 CPU processes (gloo)

DIR is an ImageFolder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), e.g. the CIFAR-10 JPEG copy.
Nothing is downloaded: the model is built from a ``ViTConfig`` (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config: never reach the hub

import torch  # noqa: E402
from torch.utils.data import Dataset, Subset  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

import multimix  # noqa: E402
from multimix.integrations.hf import MixingTrainer  # noqa: E402


class PixelDataset(Dataset):
    """An image data set as the Trainer's dicts: ``{"pixel_values": (3, H, W), "labels": int}``."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x, y = self.images[i]
        return {"pixel_values": x, "labels": y}


def subset(dataset, size, seed):
    if size is None or size >= len(dataset):
        return dataset
    return Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].tolist())


def accuracy(prediction) -> dict:
    """The Trainer's ``compute_metrics``: accuracy (%) of the predictions' arg-max."""
    return {"accuracy": 100.0 * float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--method", default="multimix", choices=["multimix", "erm"])
    p.add_argument("--num-mix", dest="n", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=96)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-test", type=int)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="runs/hf_vit")
    p.add_argument("--record", help="write this process's result (JSON) to RECORD.<rank>.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    normalize = transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    train_tf = transforms.Compose([transforms.RandomCrop(args.img_size, padding=args.img_size // 8),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(args.img_size), transforms.ToTensor(), normalize])
    train = ImageFolder(os.path.join(args.data_dir, "train"), train_tf)
    test = ImageFolder(os.path.join(args.data_dir, "test"), test_tf)
    config = ViTConfig(image_size=args.img_size, patch_size=args.patch_size, hidden_size=args.hidden_size,
                       num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden_size // 32),
                       intermediate_size=2 * args.hidden_size, num_labels=len(train.classes))
    torch.manual_seed(args.seed)
    model = ViTForImageClassification(config)
    training = TrainingArguments(
        output_dir=args.out_dir, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=256,
        num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.05,
        gradient_accumulation_steps=args.accumulate, bf16=args.bf16, use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available() else None,
        save_strategy="no", report_to=[],
        logging_steps=10, disable_tqdm=True, seed=args.seed)
    data = dict(train_dataset=PixelDataset(subset(train, args.num_train, args.seed)),
                eval_dataset=PixelDataset(subset(test, args.num_test, args.seed)), compute_metrics=accuracy)
    if args.method == "multimix":
        trainer = MixingTrainer(model=model, args=training, method=multimix.create_method("multimix", n=args.n), **data)
    else:
        trainer = Trainer(model=model, args=training, **data)
    trainer.train()
    metrics = trainer.evaluate()  # the model's own loss (cross-entropy), not a mixed one
    rank = trainer.args.process_index
    result = {"rank": rank, "method": args.method, "test_accuracy": metrics["eval_accuracy"],
              "eval_loss": metrics["eval_loss"], "global_step": trainer.state.global_step,
              "weights": [float(p.detach().double().sum()) for p in model.parameters()]}
    if args.record:
        with open(f"{args.record}.{rank}.json", "w") as f:
            json.dump(result, f)
    if trainer.is_world_process_zero():
        print(f"ViT ({args.method}): test accuracy {result['test_accuracy']:.2f}% after {trainer.state.global_step} "
              "steps")
    return result


if __name__ == "__main__":
    try:
        main()
    finally:
        # The Trainer opens a process group under torchrun but never closes it; Gloo's worker threads left running
        # at interpreter exit abort the process (SIGABRT, "terminate called without an active exception").
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
