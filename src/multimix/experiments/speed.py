"""``multimix speed``: training-step cost against the number of interpolated examples per batch.

The MultiMix paper's claim: interpolating at the embedding layer gives "orders
of magnitude more tuples at little additional cost". For n interpolated
examples per mini-batch of m, MultiMix needs one forward/backward pass;
input mixup needs ⌈n/m⌉ passes (each producing m mixed examples). In one run,
with every variant's steps interleaved (round-robin, so that machine drift
hits them alike), this times ERM, MultiMix at each n, Dense MultiMix at its
defaults and input mixup, and beside each n the parts of MultiMix's extra
cost and their physical floor: sampling Λ (n, m), writing n·m floats, the
mixing products Λ·g(Z) and Λ·Y (forward and backward), and the mixed term as
the step computes it (on the CPU one pass that never stores Λ).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from .. import functional as MF
from ..evaluation.plots import new_figure, save_figure
from ..methods import create_method
from ..models import build_model
from ..sampling import cpu_route

__all__ = ["CLOCKS", "measure_speed", "plot_speed", "format_speed_table"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _step_time(model, optimizer, method, x, y, passes: int, clock=time.perf_counter) -> float:
    start = clock()
    for _ in range(passes):
        loss = method(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize(x.device)
    return clock() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    _synchronize(device)
    return clock() - start


def _mixing(lam: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """The mixing products of MultiMix's affine shortcut with Λ given, and the loss, forward and backward:
    Λ·[g(Z) Y] in one product (:func:`multimix.functional.interpolate_pair`)."""
    MF.soft_cross_entropy(*MF.interpolate_pair(lam, logits, targets)).backward()


def _one_pass(logits: torch.Tensor, targets: torch.Tensor, n: int, alpha: float, generator) -> None:
    """MultiMix's whole mixed term, Λ drawn: :func:`multimix.functional.mixed_cross_entropy`, forward and backward."""
    MF.mixed_cross_entropy(logits, targets, n, alpha, generator=generator).backward()


def measure_speed(*, model_name: str = "cnn1d", width: int = 32, input_shape=(1, 40), num_classes: int = 10,
                  batch_size: int = 128, ns: Sequence[int] = (10, 100, 1000, 10_000, 100_000), repeats: int = 3,
                  max_mixup_seconds: float = 20.0, device="cpu", seed: int = 0, clock: str = "wall",
                  log=print) -> List[Dict[str, Any]]:
    """Step times of ERM, MultiMix (each n), Dense MultiMix and input mixup (⌈n/m⌉ passes), interleaved.

    MultiMix and Dense MultiMix run at their defaults except n. Inputs are
    random tensors of ``input_shape`` (throughput does not depend on the
    data). Each of ``repeats`` rounds takes one step of every variant in turn
    (after two warm-up rounds); medians over rounds are reported. When ⌈n/m⌉
    mixup passes would take longer than ``max_mixup_seconds`` (estimated from
    the one-pass time), mixup's time is extrapolated from that single pass and
    marked as such. ``clock="cpu"`` times with the process's CPU time instead
    of the wall clock (CPU only): on a machine shared with other jobs, time
    spent waiting for a core then does not count (threads spinning at a
    barrier still do).

    Returns:
        One row per n: step times (s) and their ratios to ERM's step
        (``multimix_over_erm_step``, ``dense_over_erm_step``: ratios of
        medians; ``..._paired``: medians of the per-round ratios, which a
        drift of the machine between rounds does not move; the ERM and Dense
        entries are the same in every row), throughput in interpolated
        examples per second, the floors ``sampler_s`` (Λ alone),
        ``write_s`` (writing n·m floats) and ``mixing_s`` (Λ·g(Z) and Λ·Y
        with the loss, forward and backward, Λ given), and ``mixed_term_s``:
        MultiMix's mixed term as the step computes it, Λ drawn (on the CPU
        in one pass, Λ never stored: :func:`multimix.functional.mixed_cross_entropy`).
    """
    device = torch.device(device)
    if clock not in CLOCKS or (clock == "cpu" and device.type != "cpu"):
        raise ValueError(f"clock must be 'wall', or 'cpu' on a CPU device; got {clock!r} on {device.type}")
    tick = CLOCKS[clock]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes=num_classes, input_shape=input_shape, width=width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)

    def generator() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    sampling_generator = generator()
    steps: Dict[str, Callable[[], float]] = {}
    erm, dense = create_method("erm"), create_method("dense_multimix", generator=generator())
    mixup = create_method("mixup", alpha=1.0, generator=generator())
    steps["erm"] = lambda: _step_time(model, optimizer, erm, x, y, 1, tick)
    steps["dense"] = lambda: _step_time(model, optimizer, dense, x, y, 1, tick)
    for _ in range(2):
        _step_time(model, optimizer, mixup, x, y, 1, tick)
    one_pass = statistics.median(_step_time(model, optimizer, mixup, x, y, 1, tick) for _ in range(3))
    logits = torch.randn(batch_size, num_classes, device=device, requires_grad=True)
    targets = MF.as_soft_targets(y, num_classes).to(device)
    passes_of, extrapolated_of = {}, {}
    for n in ns:
        multimix = create_method("multimix", n=n, generator=generator())
        alpha = multimix.mix.alpha_for(batch_size)
        lam = MF.dirichlet(n, batch_size, alpha, generator=generator())
        passes_of[n] = math.ceil(n / batch_size)
        extrapolated_of[n] = passes_of[n] * one_pass > max_mixup_seconds
        steps[f"multimix {n}"] = lambda m=multimix: _step_time(model, optimizer, m, x, y, 1, tick)
        steps[f"sampler {n}"] = lambda n=n, a=alpha: _timed(
            lambda: MF.dirichlet(n, batch_size, a, generator=sampling_generator), device, tick)
        steps[f"write {n}"] = lambda n=n: _timed(
            lambda: torch.empty(n, batch_size, device=device).fill_(0.5), device, tick)
        steps[f"mixing {n}"] = lambda lam=lam: _timed(lambda: _mixing(lam, logits, targets), device, tick)
        steps[f"one pass {n}"] = lambda n=n, a=alpha: _timed(
            lambda: _one_pass(logits, targets, n, a, sampling_generator), device, tick)
        if not extrapolated_of[n]:
            steps[f"mixup {n}"] = lambda p=passes_of[n]: _step_time(model, optimizer, mixup, x, y, p, tick)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for round_ in range(2 + repeats):  # two warm-up rounds, then `repeats` measured ones
        for name, step in steps.items():
            elapsed = step()
            if round_ >= 2:
                times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    erm_time, dense_time = median["erm"], median["dense"]

    def paired(name: str) -> float:
        """Median over rounds of the variant's step over ERM's step of the same round: a drift of the machine's
        speed between rounds cancels."""
        return statistics.median(t / e for t, e in zip(times[name], times["erm"]))

    route = cpu_route() if device.type == "cpu" else "torch"
    log(f"ERM step {erm_time * 1e3:.2f} ms; Dense MultiMix (defaults) step {dense_time * 1e3:.2f} ms = "
        f"{dense_time / erm_time:.2f}x ERM; Λ sampler: {route}")
    rows = []
    for n in ns:
        mm, passes = median[f"multimix {n}"], passes_of[n]
        mix = passes * one_pass if extrapolated_of[n] else median[f"mixup {n}"]
        rows.append({"n": n, "multimix_step_s": mm, "multimix_examples_per_s": n / mm,
                     "mixup_passes": passes, "mixup_step_s": mix, "mixup_examples_per_s": passes * batch_size / mix,
                     "mixup_extrapolated": extrapolated_of[n], "multimix_over_erm_step": mm / erm_time,
                     "erm_step_s": erm_time, "dense_multimix_step_s": dense_time,
                     "dense_over_erm_step": dense_time / erm_time, "sampler_s": median[f"sampler {n}"],
                     "write_s": median[f"write {n}"], "mixing_s": median[f"mixing {n}"], "sampler": route,
                     "mixed_term_s": median[f"one pass {n}"],
                     "multimix_over_erm_paired": paired(f"multimix {n}"), "dense_over_erm_paired": paired("dense")})
        log(f"n = {n:>6}: MultiMix step {mm * 1e3:7.2f} ms = {mm / erm_time:6.2f}x ERM "
            f"(paired {rows[-1]['multimix_over_erm_paired']:.2f}x) "
            f"(sampler {median[f'sampler {n}'] * 1e3:.2f} ms, write n*m floats {median[f'write {n}'] * 1e3:.2f} ms, "
            f"mixing {median[f'mixing {n}'] * 1e3:.2f} ms, mixed term {median[f'one pass {n}'] * 1e3:.2f} ms); "
            f"{n / mm:,.0f} interpolated ex/s; input mixup {passes} "
            f"passes {passes * batch_size / mix:,.0f} ex/s{' (extrapolated)' if extrapolated_of[n] else ''}")
    return rows


def format_speed_table(rows: List[Dict[str, Any]]) -> str:
    """The measured rows as a Markdown table (step / ERM, the parts of the extra cost, throughput)."""
    lines = ["| n | MultiMix step / ERM | paired | Λ sampler (ms) | write n·m floats (ms) | mixing fwd+bwd (ms) "
             "| mixed term (ms) | MultiMix ex/s | input mixup ex/s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['multimix_over_erm_step']:.2f} | {r['multimix_over_erm_paired']:.2f} "
                     f"| {r['sampler_s'] * 1e3:.2f} "
                     f"| {r['write_s'] * 1e3:.2f} | {r['mixing_s'] * 1e3:.2f} | {r['mixed_term_s'] * 1e3:.2f} "
                     f"| {r['multimix_examples_per_s']:,.0f} "
                     f"| {r['mixup_examples_per_s']:,.0f}{' (extrap.)' if r['mixup_extrapolated'] else ''} |")
    if rows:
        lines.append(f"\nERM step {rows[0]['erm_step_s'] * 1e3:.2f} ms; Dense MultiMix (defaults) step / ERM "
                     f"{rows[0]['dense_over_erm_step']:.2f} (paired {rows[0]['dense_over_erm_paired']:.2f}).")
    return "\n".join(lines)


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
