"""``multimix speed``: training throughput against the number of interpolated examples per batch.

The MultiMix paper's claim: interpolating at the embedding layer gives "orders
of magnitude more tuples at little additional cost". For n interpolated
examples per mini-batch of m, MultiMix needs one forward/backward pass;
input mixup needs ⌈n/m⌉ passes (each producing m mixed examples). Both are
timed here on the same model and batch, interleaved, in one run.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from ..evaluation.plots import new_figure, save_figure
from ..methods import create_method
from ..models import build_model

__all__ = ["measure_speed", "plot_speed"]


def _step_time(model, optimizer, method, x, y, passes: int) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        loss = method(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def measure_speed(*, model_name: str = "cnn1d", width: int = 32, input_shape=(1, 40), num_classes: int = 10,
                  batch_size: int = 128, ns: Sequence[int] = (10, 100, 1000, 10_000, 100_000), repeats: int = 3,
                  max_mixup_seconds: float = 20.0, device="cpu", seed: int = 0, log=print) -> List[Dict[str, Any]]:
    """Interpolated examples per second for MultiMix and for input mixup with ⌈n/m⌉ passes.

    Inputs are random tensors of ``input_shape`` (throughput does not depend
    on the data). When ⌈n/m⌉ mixup passes would take longer than
    ``max_mixup_seconds`` (estimated from the measured one-pass time), mixup's
    time is extrapolated from that single pass and marked as such.
    """
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes=num_classes, input_shape=input_shape, width=width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    mixup = create_method("mixup", alpha=1.0, generator=torch.Generator(device=device).manual_seed(seed))
    erm = create_method("erm")
    for method in (erm, mixup):  # warm-up
        _step_time(model, optimizer, method, x, y, 2)
    one_pass = statistics.median(_step_time(model, optimizer, mixup, x, y, 1) for _ in range(repeats))
    erm_time = statistics.median(_step_time(model, optimizer, erm, x, y, 1) for _ in range(repeats))
    rows = []
    for n in ns:
        multimix = create_method("multimix", n=n, alpha=0.02, generator=torch.Generator(device=device).manual_seed(seed))
        _step_time(model, optimizer, multimix, x, y, 1)
        passes = math.ceil(n / batch_size)
        extrapolated = passes * one_pass > max_mixup_seconds
        mm_times, mix_times = [], []
        for _ in range(repeats):  # interleaved
            mm_times.append(_step_time(model, optimizer, multimix, x, y, 1))
            if not extrapolated:
                mix_times.append(_step_time(model, optimizer, mixup, x, y, passes))
        mm, mix = statistics.median(mm_times), (passes * one_pass if extrapolated else statistics.median(mix_times))
        rows.append({"n": n, "multimix_step_s": mm, "multimix_examples_per_s": n / mm,
                     "mixup_passes": passes, "mixup_step_s": mix, "mixup_examples_per_s": passes * batch_size / mix,
                     "mixup_extrapolated": extrapolated, "multimix_over_erm_step": mm / erm_time})
        log(f"n = {n:>6}: MultiMix {n / mm:>12,.0f} interpolated ex/s (step {mm * 1e3:7.1f} ms, "
            f"{mm / erm_time:.2f}x ERM); input mixup {passes} passes {passes * batch_size / mix:>9,.0f} ex/s"
            f"{' (extrapolated)' if extrapolated else ''}")
    return rows


def plot_speed(rows: List[Dict[str, Any]], path: Path, title: str = "") -> Path:
    fig = new_figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    ns = [r["n"] for r in rows]
    ax.loglog(ns, [r["multimix_examples_per_s"] for r in rows], "o-", color="tab:red", label="MultiMix (1 pass)")
    ax.loglog(ns, [r["mixup_examples_per_s"] for r in rows], "s--", color="tab:blue", label="input mixup (⌈n/m⌉ passes)")
    for r in rows:
        if r["mixup_extrapolated"]:
            ax.annotate("extrapolated", (r["n"], r["mixup_examples_per_s"]), fontsize=7, xytext=(3, -10),
                        textcoords="offset points")
    ax.set_xlabel("interpolated examples per mini-batch, n")
    ax.set_ylabel("interpolated examples per second")
    ax.set_title(title or "training throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
