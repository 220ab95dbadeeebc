"""Bytes communicated per training step by global mixing, against DDP's gradient all-reduce.

Reproduce (from the repository root)::

    .venv/bin/python benchmarks/communication.py                 # the default table (W = 8, m = 128)
    .venv/bin/python benchmarks/communication.py --world-size 64 --batch-size 256

These are exact byte counts from tensor sizes (the model's embedding shape and
parameter count, read from the models themselves), not timings. Per step and
rank, ``--mix-scope global`` all-gathers the embeddings and soft targets of the
global batch (m·W·(d + c) floats; Dense MultiMix: m·W·(d·r + c) floats, or
m·W·(d + c)·r with per-position teacher targets) and reduce-scatters the
embedding gradient in the backward pass (m·W·d[·r] floats), while DDP
all-reduces every parameter gradient (P floats) whatever the method. "sent"
columns are what one rank puts on the wire with ring algorithms: (W−1)/W of the
gathered tensors and 2(W−1)/W of the gradients.
"""

from __future__ import annotations

import argparse
import math

import torch

from multimix.engine.distributed import format_bytes, mixing_communication
from multimix.models import build_model

MODELS = [
    # label, model name, width, input shape, classes
    ("PreActResNet-18 (width 64), CIFAR-100", "preact_resnet18", 64, (3, 32, 32), 100),
    ("1-D CNN (width 32), MNIST-1D", "cnn1d", 32, (1, 40), 10),
]


def rows(batch_size: int, world_size: int, element_bytes: int = 4):
    out = []
    for label, name, width, shape, classes in MODELS:
        model = build_model(name, num_classes=classes, input_shape=shape, width=width).eval()
        with torch.no_grad():
            features = model.encode(torch.zeros(1, *shape))
        d, r = features.shape[1], math.prod(features.shape[2:])
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        for method, positions in (("multimix", 1), ("dense_multimix", r)):
            c = mixing_communication(batch_size=batch_size, world_size=world_size, embed_dim=d, num_classes=classes,
                                     num_parameters=params, positions=positions, element_bytes=element_bytes)
            out.append({"model": label, "method": method, "d": d, "r": positions, **c})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128, help="m, examples per process (default 128)")
    parser.add_argument("--world-size", type=int, default=8, help="W, processes (default 8)")
    parser.add_argument("--element-bytes", type=int, default=4,
                        help="bytes per embedding element: 4 (float32, default) or 2 (bfloat16 under autocast)")
    args = parser.parse_args()
    print(f"m = {args.batch_size} per process, W = {args.world_size}, embeddings in {args.element_bytes}-byte floats, "
          "targets and parameter gradients in float32; exact byte counts from tensor sizes, not timings\n")
    print("| model | method | d × r | params P | all-gather (forward) | reduce-scatter (backward) | "
          "gradient all-reduce | (gather + scatter) / all-reduce | sent per rank (ring): mixing / all-reduce |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for c in rows(args.batch_size, args.world_size, args.element_bytes):
        print(f"| {c['model']} | {c['method']} | {c['d']} × {c['r']} | {c['num_parameters']:,} | "
              f"{format_bytes(c['gather_forward_bytes'])} | {format_bytes(c['gather_backward_bytes'])} | "
              f"{format_bytes(c['allreduce_bytes'])} | {100 * c['ratio']:.1f}% | "
              f"{format_bytes(c['gather_sent_bytes'])} / {format_bytes(c['allreduce_sent_bytes'])} |")


if __name__ == "__main__":
    main()
