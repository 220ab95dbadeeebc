"""Overhead of MultiMix on the CPU: training step, mixing op, and Λ sampler.

Reproduce (from the repository root)::

    .venv/bin/python benchmarks/overhead.py            # all three sections (~4 min on 2 idle cores)
    .venv/bin/python benchmarks/overhead.py --quick    # smoke run (small network, n <= 1e4)
    .venv/bin/python benchmarks/overhead.py --only step|mixing|sampler

Every number printed is measured in this run; nothing is hard-coded except the
issue's targets, which are printed next to the measurements. Each timing is the
median of several repeats taken after warm-up calls, and competing variants are
measured side by side in interleaved (round-robin) order so that machine drift
(other processes, thermal throttling) hits them alike.

Sections:

``step``
    Training-step time (forward + backward + SGD step) of PreActResNet-18 on
    32×32 inputs, 100 classes, for ERM, MultiMix and Dense MultiMix (n = 1000,
    α = 0.02; dense: r = 16 positions, self attention), as ratios to ERM.
    The issue's targets (MultiMix/ERM ≤ 1.03, Dense/ERM ≤ 1.15) are for the
    full-width network (``--width 64``, batch 128).
``mixing``
    The mixing op alone, forward + backward with a pre-sampled Λ, for
    n ∈ {1e2, 1e3, 1e4, 1e5}: ``multimix.MultiMix`` against a naive reference
    that builds the (n, m, d) tensor explicitly. Peak extra memory is the
    growth of the resident set (VmHWM) over one call, each measured in a fresh
    subprocess.
``sampler``
    ``multimix.functional.dirichlet`` (independent rows, and with
    ``rows_per_draw`` = 8) against ``torch.distributions.Dirichlet`` for
    n ∈ {1e2, …, 1e5} and α ∈ {0.02, 1.0}.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import multimix
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import multimix

from multimix import functional as MF
from multimix.models import preact_resnet18

# The targets.
STEP_TARGETS = {"MultiMix": 1.03, "Dense MultiMix": 1.15}
SAMPLER_TARGET_N = 10_000
SAMPLER_TARGET_SPEEDUP = 10.0

GIB = 1024**3
MIB = 1024**2


# ---------------------------------------------------------------------------
# timing and formatting helpers
# ---------------------------------------------------------------------------


def interleaved_times(fns: Dict[str, Callable[[], object]], warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Seconds per call of every function, measured round-robin.

    Each function is called ``warmup`` times first (not timed). Then each of
    ``repeats`` rounds times one call of every function; the starting function
    rotates from round to round so that none is always first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    gc.collect()
    for k in range(repeats):
        for i in range(len(names)):
            name = names[(k + i) % len(names)]
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def scaled_repeats(base: int, n: int, minimum: int = 3, ref: int = 1000) -> int:
    """Fewer repeats for big n: ``base`` up to n = ``ref``, then ∝ 1/√(n/ref), at least ``minimum``."""
    if n <= ref:
        return base
    return max(minimum, round(base / (n / ref) ** 0.5))


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_bytes(nbytes: float) -> str:
    if nbytes >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    if nbytes >= MIB:
        return f"{nbytes / MIB:.1f} MiB"
    return f"{nbytes / 1024:.0f} KiB"


def fmt_n(n: int) -> str:
    exponent = len(str(n)) - 1
    return f"1e{exponent}" if n == 10**exponent else str(n)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; the first column is left-aligned, the others right-aligned."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(headers))]

    def line(row):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------
# section 1: training step
# ---------------------------------------------------------------------------


def bench_step(args) -> None:
    print(f"## Training step: PreActResNet-18 (width {args.width}), batch {args.batch}, 32x32 inputs, 100 classes\n")
    torch.manual_seed(args.seed)
    model = preact_resnet18(num_classes=100, width=args.width)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 100, (args.batch,))
    with torch.no_grad():
        dense_shape = tuple(model.encode(x[:1]).shape[1:])
    r = dense_shape[1] * dense_shape[2]

    specs = {
        "ERM": ("erm", {}),
        "MultiMix": ("multimix", dict(n=args.n, alpha=args.alpha)),
        "Dense MultiMix": ("dense_multimix", dict(n=args.n, alpha=args.alpha, attention="self")),
    }
    steps = {}
    for label, (name, kwargs) in specs.items():
        torch.manual_seed(args.seed)
        method = multimix.create_method(name, **kwargs)
        net = preact_resnet18(num_classes=100, width=args.width)
        net.load_state_dict(model.state_dict())  # every method starts from the same weights
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step(method=method, net=net, opt=opt):
            for _ in range(args.steps_per_repeat):
                opt.zero_grad(set_to_none=True)
                loss = method(net, x, y)
                loss.backward()
                opt.step()
                method.update(net)

        steps[label] = step

    print(f"Methods: `create_method(\"erm\")`, `create_method(\"multimix\", n={args.n}, alpha={args.alpha})`, "
          f"`create_method(\"dense_multimix\", n={args.n}, alpha={args.alpha})` (attention \"self\"; dense "
          f"features (m, {dense_shape[0]}, {dense_shape[1]}, {dense_shape[2]}), r = {r} positions).")
    print(f"Step = zero_grad + forward + backward + SGD step; {args.warmup} warm-up step(s) per method, then "
          f"{args.repeats} interleaved rounds of {args.steps_per_repeat} step(s) per method; median over rounds.\n")

    times = interleaved_times(steps, args.warmup, args.repeats)
    per_step = {k: [t / args.steps_per_repeat for t in v] for k, v in times.items()}
    erm = median(per_step["ERM"])
    rows = []
    for label, values in per_step.items():
        ratio = median(values) / erm
        paired = median([t / e for t, e in zip(values, per_step["ERM"])])
        target = STEP_TARGETS.get(label)
        rows.append([
            label,
            fmt_ms(median(values)),
            f"{min(values) * 1e3:.0f}-{max(values) * 1e3:.0f}",
            f"{ratio:.3f}",
            f"{paired:.3f}",
            "-" if target is None else f"<= {target:.2f}",
            "-" if target is None else verdict(paired <= target),
        ])
    print(table(["method", "median step (ms)", "range (ms)", "ratio to ERM", "paired ratio",
                 "target", "result"], rows))
    print("\n`ratio to ERM` = median step time / ERM's median step time; `paired ratio` = median over rounds of "
          "(step time / ERM's step time in the same round), which cancels drift between rounds and is the one "
          "judged against the target.")
    note = ("The targets are for the full-width network (--width 64, batch 128): the mixing cost does not depend "
            "on the width, so at smaller widths it weighs more.")
    if args.width != 64 or args.batch != 128:
        note += f" This run used width {args.width}, batch {args.batch}: its PASS/FAIL is indicative only."
    print(note + "\n")


# ---------------------------------------------------------------------------
# section 2: the mixing op alone
# ---------------------------------------------------------------------------


def mixing_inputs(n: int, m: int, d: int, c: int, alpha: float, seed: int):
    """(z, y, head, lam) for the mixing benchmark; z is a leaf that requires grad."""
    torch.manual_seed(seed)
    head = nn.Linear(d, c)
    z = torch.randn(m, d, requires_grad=True)
    y = torch.randint(0, c, (m,))
    lam = MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(seed))
    return z, y, head, lam


def mixing_call(impl: str, n: int, alpha: float, z: Tensor, y: Tensor, head: nn.Linear, lam: Tensor):
    """A function running one forward + backward of ``impl`` ("ours" or "naive"); it returns the loss."""
    if impl == "ours":
        # The naive reference computes the mixed loss only: compare like with like (no clean-example term).
        mm = multimix.MultiMix(n=n, alpha=alpha, clean_weight=0.0)

        def loss_fn():
            return mm(z, y, head, lam=lam)
    elif impl == "naive":
        targets = F.one_hot(y, head.out_features).float()

        def loss_fn():
            mixed = (lam[:, :, None] * z[None]).sum(1)  # (n, m, d) built explicitly, then (n, d)
            log_p = torch.log_softmax(head(mixed), dim=1)
            return -((lam @ targets) * log_p).sum(1).mean()
    else:
        raise ValueError(impl)

    def call():
        z.grad = None
        head.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return call


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that it cannot hide growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_status() -> Dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process in bytes, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value, _unit = line.split()
                out[key[:-1]] = int(value) * 1024
    return out


def _reset_peak_rss() -> bool:
    """Reset VmHWM / ru_maxrss to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(spec: dict) -> dict:
    """Run in a fresh subprocess: peak RSS growth over one forward + backward call."""
    torch.set_num_threads(spec["threads"])
    inputs = mixing_inputs(spec["n"], spec["m"], spec["d"], spec["c"], spec["alpha"], spec["seed"])
    call = mixing_call(spec["impl"], spec["n"], spec["alpha"], *inputs)
    call()  # warm-up: one-time costs (thread pools, kernels) are not the op's memory
    gc.collect()
    _malloc_trim()
    if _reset_peak_rss():
        method = "VmHWM after reset"
        before = _rss_status()["VmRSS"]
        call()
        peak = _rss_status()["VmHWM"]
    else:  # fall back to getrusage: only growth beyond the process's earlier peak is seen
        method = "ru_maxrss delta"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"extra": max(0, peak - before), "method": method}


def measure_memory(spec: dict) -> dict:
    """Run :func:`memory_worker` in a fresh Python process and return its result."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_memory-worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed for {spec}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_mixing(args) -> None:
    m, d, c, alpha = 128, 512, 100, args.alpha
    print(f"## Mixing op alone: m = {m}, d = {d}, c = {c}, head nn.Linear({d}, {c}), alpha = {alpha}\n")
    print("ours = `MultiMix(n=n, alpha)(z, y, head, lam=lam)`; naive = `(lam[:, :, None] * z[None]).sum(1)` "
          "then head and soft cross-entropy. Forward + backward; Λ is sampled beforehand (sampling excluded).\n")
    print("Theoretical size of what grows with n (float32):\n")
    size_rows = []
    for n in args.sizes:
        size_rows.append([fmt_n(n), fmt_bytes(n * (m + c) * 4), fmt_bytes(n * m * d * 4),
                          f"{(m * d) / (m + c):.0f}x"])
    print(table(["n", "n(m+c)·4 B: Λ + mixed logits", "n·m·d·4 B: naive (n, m, d)", "ratio"], size_rows))
    print()

    rows = []
    notes = set()
    for n in args.sizes:
        naive_bytes = n * m * d * 4
        run_naive = naive_bytes <= args.max_naive_gib * GIB
        spec = dict(n=n, m=m, d=d, c=c, alpha=alpha, seed=args.seed, threads=torch.get_num_threads())
        inputs = mixing_inputs(n, m, d, c, alpha, args.seed)
        fns = {"ours": mixing_call("ours", n, alpha, *inputs)}
        if run_naive:
            fns["naive"] = mixing_call("naive", n, alpha, *inputs)
        repeats = scaled_repeats(args.op_repeats, n)
        times = interleaved_times(fns, args.warmup, repeats)
        mem = {impl: measure_memory(dict(spec, impl=impl)) for impl in fns}
        notes.update(r["method"] for r in mem.values())
        ours_t = median(times["ours"])
        if run_naive:
            naive_t = median(times["naive"])
            z = inputs[0]
            loss_ours, grad_ours = fns["ours"](), z.grad.clone()
            loss_naive, grad_naive = fns["naive"](), z.grad.clone()
            loss_gap = (loss_ours - loss_naive).abs().item()
            grad_gap = ((grad_ours - grad_naive).abs().max() / grad_naive.abs().max()).item()
            if loss_gap > 1e-4 * max(1.0, loss_naive.abs().item()) or grad_gap > 1e-4:
                raise SystemExit(f"overhead.py: MultiMix and the naive reference disagree at n = {n}: "
                                 f"|Δloss| = {loss_gap:.2e}, relative |Δ∂z| = {grad_gap:.2e}; the timings compare "
                                 "different computations")
            agree = f"{loss_gap:.0e} / {grad_gap:.0e}"
            rows.append([fmt_n(n), repeats, fmt_ms(ours_t), fmt_ms(naive_t), f"{naive_t / ours_t:.1f}x",
                         fmt_bytes(mem["ours"]["extra"]), f"{mem['ours']['extra'] / (n * (m + c) * 4):.1f}",
                         fmt_bytes(mem["naive"]["extra"]), agree])
        else:
            skipped = f"skipped: would need {naive_bytes / GIB:.1f} GiB for the (n, m, d) tensor"
            rows.append([fmt_n(n), repeats, fmt_ms(ours_t), skipped, "-", fmt_bytes(mem["ours"]["extra"]),
                         f"{mem['ours']['extra'] / (n * (m + c) * 4):.1f}", "-", "-"])
        del inputs, fns
        gc.collect()
    print(table(["n", "repeats", "ours (ms)", "naive (ms)", "speed-up", "ours peak extra", "ours / n(m+c)·4 B",
                 "naive peak extra", "Δloss / rel. Δ∂z"], rows))
    print(f"\nPeak extra memory = growth of the resident set over one forward + backward call after one warm-up "
          f"call, each in a fresh subprocess ({', '.join(sorted(notes))}); resolution is a few hundred KiB. A constant "
          f"`ours / n(m+c)·4 B` across n means our memory grows as O(n(m+c)), not O(n·m·d). "
          f"Δloss / rel. Δ∂z: |loss difference| and max |∂loss/∂z difference| / max |∂loss/∂z| "
          f"between the two. "
          f"The naive reference is skipped above --max-naive-gib = {args.max_naive_gib:g} GiB.\n")


# ---------------------------------------------------------------------------
# section 3: the Λ sampler
# ---------------------------------------------------------------------------


def bench_sampler(args) -> None:
    m = 128
    print(f"## Sampler: Λ of shape (n, {m})\n")
    print(f"ours = `multimix.functional.dirichlet(n, {m}, alpha, generator=g)`; torch = "
          f"`torch.distributions.Dirichlet(torch.full(({m},), alpha)).sample((n,))`. "
          f"Interleaved repeats, {args.warmup} warm-up call(s) each.\n")
    rows = []
    for alpha in args.sampler_alphas:
        torch.manual_seed(args.seed)
        g = torch.Generator().manual_seed(args.seed)
        dist = torch.distributions.Dirichlet(torch.full((m,), alpha))
        for n in args.sizes:
            fns = {
                "ours": lambda n=n: MF.dirichlet(n, m, alpha, generator=g),
                "reuse": lambda n=n: MF.dirichlet(n, m, alpha, generator=g, rows_per_draw=args.rows_per_draw),
                "torch": lambda n=n: dist.sample((n,)),
            }
            repeats = scaled_repeats(args.op_repeats, n)
            times = interleaved_times(fns, args.warmup, repeats)
            ours_t, reuse_t, torch_t = median(times["ours"]), median(times["reuse"]), median(times["torch"])
            is_target = n == SAMPLER_TARGET_N
            for label, t in (("independent rows", ours_t), (f"rows_per_draw={args.rows_per_draw}", reuse_t)):
                speedup = torch_t / t
                rows.append([f"{alpha:g}", fmt_n(n), label, repeats, fmt_ms(t), fmt_ms(torch_t), f"{speedup:.1f}x",
                             f">= {SAMPLER_TARGET_SPEEDUP:g}x" if is_target else "-",
                             verdict(speedup >= SAMPLER_TARGET_SPEEDUP) if is_target else "-"])
    print(table(["alpha", "n", "ours", "repeats", "ours (ms)", "torch (ms)", "speed-up", "target", "result"], rows))
    print(f"\nrows_per_draw={args.rows_per_draw}: each Dirichlet vector fills {args.rows_per_draw} rows under "
          "different random column orders; every row is exactly Dir(alpha), rows of one vector are not independent.")

    # Context: the cost of using Λ once it is sampled, the (n x m)(m x c) logit product.
    n, c = 1000, 100
    g = torch.Generator().manual_seed(args.seed)
    lam = MF.dirichlet(n, m, args.alpha, generator=g)
    logits = torch.randn(m, c)
    times = interleaved_times({
        "product": lambda: lam @ logits,
        "sample": lambda: MF.dirichlet(n, m, args.alpha, generator=g),
    }, args.warmup, args.op_repeats)
    print(f"\nFor context, with n = {n}, m = {m}, c = {c}: the logit product `lam @ logits` "
          f"({n}x{m} @ {m}x{c}) takes {fmt_ms(median(times['product']))} ms; sampling that Λ with "
          f"`dirichlet` (alpha = {args.alpha:g}) takes {fmt_ms(median(times['sample']))} ms.\n")


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def parse_sizes(text: str) -> List[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def parse_floats(text: str) -> List[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measure MultiMix's overhead (training step, mixing op, sampler) and print Markdown tables.",
        epilog="Reproduce: .venv/bin/python benchmarks/overhead.py (from the repository root).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--only", choices=("step", "mixing", "sampler"), default=None,
                        help="run one section only (default: all three)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: width 16, batch 32, n up to 1e4, fewer repeats")
    parser.add_argument("--width", type=int, default=64, help="PreActResNet-18 width (64 = the papers' network)")
    parser.add_argument("--batch", type=int, default=128, help="batch size m of the training step")
    parser.add_argument("--n", type=int, default=1000, help="interpolated examples per batch in the step section")
    parser.add_argument("--alpha", type=float, default=0.02, help="Dirichlet alpha of MultiMix")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds of the step section")
    parser.add_argument("--steps-per-repeat", type=int, default=1, help="training steps timed per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per variant")
    parser.add_argument("--op-repeats", type=int, default=20,
                        help="repeats of the mixing and sampler sections at n <= 1e3 (fewer for bigger n)")
    parser.add_argument("--sizes", type=parse_sizes, default=[100, 1000, 10_000, 100_000],
                        help="comma-separated n of the mixing and sampler sections")
    parser.add_argument("--rows-per-draw", type=int, default=8,
                        help="rows_per_draw of the sampler's second variant (default 8)")
    parser.add_argument("--sampler-alphas", type=parse_floats, default=[0.02, 1.0],
                        help="comma-separated alphas of the sampler section")
    parser.add_argument("--max-naive-gib", type=float, default=4.0,
                        help="skip the naive mixing reference when its (n, m, d) tensor exceeds this")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed")
    parser.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    if args.quick:
        args.width, args.batch = 16, 32
        args.repeats = min(args.repeats, 3)
        args.op_repeats = min(args.op_repeats, 5)
        args.sizes = [n for n in args.sizes if n <= 10_000]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    sections = {"step": bench_step, "mixing": bench_mixing, "sampler": bench_sampler}
    chosen = [args.only] if args.only else list(sections)
    print("# multimix overhead benchmark\n")
    print(f"multimix {multimix.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}; torch.get_num_threads() = {torch.get_num_threads()}, "
          f"os.cpu_count() = {os.cpu_count()}; seed {args.seed}; load average at start "
          f"{os.getloadavg()[0]:.2f}; sections: {', '.join(chosen)}{' (--quick)' if args.quick else ''}.\n")
    start = time.perf_counter()
    for name in chosen:
        section_start = time.perf_counter()
        sections[name](args)
        print(f"_({name}: {time.perf_counter() - section_start:.0f} s)_\n")
    print(f"Total time: {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine make the timings noisy).")


if __name__ == "__main__":
    main()
