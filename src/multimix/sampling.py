"""The Dirichlet sampler behind Λ: exact rows λ_k ~ Dir(α·1_m), fast on the CPU, sync-free everywhere.

Public through :func:`multimix.functional.dirichlet`. Three exact routes:

* On the CPU in float32 (the default for a CPU generator), when it compiled:
  the fused C sampler of :mod:`multimix.native`, which draws its own bits
  (xoshiro256++ on 16 SIMD lanes, seeded by one draw of the torch generator)
  and runs the algorithms below in one vectorised loop.
* Otherwise on the CPU (``method="eager"``, float64, or no compiler): the random bits come from
  numpy's SFC64 bit generator (seeded by one draw of the torch generator, so
  results are reproducible and no other RNG is touched), and the gammas are
  produced block by block (a few hundred rows at a time, so every pass runs
  in cache) with a handful of in-place tensor passes:

  - α = 1: exponentials −log U, normalised (as log U over its row sum);
  - α < 1: log Gamma(α) through an exponential proposal for Gamma(1 + α),
    see :func:`_log_gamma_small`; ≥ 68% acceptance, ≥ 99% for α ≤ 0.01;
  - α > 1: Marsaglia & Tsang (2000) with Box–Muller normals (≥ 95%).

  Each block draws a few spare candidates beyond its entries (expected
  rejections plus ``SPARE_SIGMAS`` standard deviations); rejected entries
  take the accepted spares in order, and in the rare case they fall short,
  further accepted candidates drawn the same way. Each accepted candidate of
  an i.i.d. stream has the target law, independent of which entries were
  rejected, so every entry is exact. The host-side bookkeeping reads CPU
  memory only: no device synchronisation exists to be had.
* Elsewhere (CUDA and other devices, or ``method="torch"``): torch's own
  gamma kernel (``torch._standard_gamma``, the sampler of
  ``torch.distributions.Gamma``) with the boost Gamma(α) = Gamma(α + 1)·U^{1/α}
  in log space. One kernel launch per tensor and no value ever read back to
  the host: no host–device synchronisation.

All take weights to a row softmax in log space that floors each weight at
≈ 1e-36 of its row maximum, so any α > 0 gives finite rows that sum to 1 and
no subnormal numbers (which slow x86 arithmetic several-fold).

Uniforms carry 32 random bits in float32 work (63 in float64). On the eager
path a zero word, whose logarithm is infinite, is rejected and drawn again
(p = 2^-32); the fused sampler takes the midpoints (w + 1/2)·2^-31 of the
word's top 31 bits w instead.
The routes draw different streams from one seed, all from the same law.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from . import native

__all__ = ["DIRICHLET_METHODS", "NativeUnavailable", "cpu_route", "dirichlet_rows", "masked_dirichlet_rows",
           "native_seed"]

DIRICHLET_METHODS = ("auto", "native", "eager", "torch")
BLOCK_ENTRIES = 1 << 17  # entries per block on the CPU: the block's scratch (≈ 2 MB) stays in cache
PIECE_WORDS = 1 << 13  # 64-bit words per numpy draw (64 KB: recycled by malloc, no page faults)
SPARE_SIGMAS = 4.0  # spare candidates per block: expected rejections plus this many standard deviations
NONE_REJECTED = np.empty(0, dtype=np.intp)


def dirichlet_rows(rows: int, m: int, alpha: float, *, generator: Optional[torch.Generator], device: torch.device,
                   dtype: torch.dtype, method: str = "auto") -> Tensor:
    """(rows, m) i.i.d. rows ~ Dir(α·1_m) on ``device`` in ``dtype`` (float32 or float64; arguments checked).

    ``method="auto"`` takes the fused sampler on the CPU in float32 when it
    compiled, else the eager CPU sampler on the CPU, and torch's gamma kernel
    elsewhere; ``"native"``, ``"eager"`` and ``"torch"`` force one route
    (``"native"`` raises :class:`NativeUnavailable` where it cannot run).
    """
    on_cpu = device.type == "cpu"
    if method in ("auto", "native") and on_cpu and cpu_route(dtype, alpha) == "native":
        return _native_dirichlet(native.kernels(), rows, m, alpha, generator)
    if method == "native":
        raise NativeUnavailable(
            f"method='native' needs a CPU generator or device, float32, alpha >= {native.MIN_ALPHA} and the "
            f"compiled sampler (got device {device}, dtype {dtype}, alpha {alpha}, compiled: "
            f"{native.kernels() is not None}; "
            "MULTIMIX_NATIVE=0 turns it off); use method='auto'")
    if method == "eager" and not on_cpu:
        raise ValueError(f"method='eager' samples on the CPU (with a CPU generator), got device {device}; "
                         "use method='auto' or 'torch'")
    if method in ("auto", "eager") and on_cpu:
        return _cpu_dirichlet(rows, m, alpha, generator, dtype)
    try:
        return _torch_dirichlet(rows, m, alpha, generator, device, dtype)
    except NotImplementedError:  # a backend without torch's gamma kernel (MPS): the CPU sampler, seeded on the device
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=device).item()  # the one read-back
        cpu = torch.Generator().manual_seed(seed)
        return dirichlet_rows(rows, m, alpha, generator=cpu, device=torch.device("cpu"), dtype=dtype).to(device)


def cpu_route(dtype: torch.dtype = torch.float32, alpha: float = 1.0) -> str:
    """The CPU route ``method="auto"`` takes for ``dtype`` and ``alpha``: ``"native"`` in float32 with
    α ≥ ``native.MIN_ALPHA`` when the fused sampler compiled, else ``"eager"``. The routes draw different streams
    from one seed, so run records name theirs."""
    fused = dtype == torch.float32 and alpha >= native.MIN_ALPHA and native.kernels() is not None
    return "native" if fused else "eager"


class NativeUnavailable(RuntimeError):
    """``method="native"`` was asked for where the fused sampler cannot run."""


def native_seed(generator: Optional[torch.Generator]) -> int:
    """The fused sampler's seed of a call: one 63-bit draw of the (CPU) ``generator``; a host read, no device sync."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator))


@torch.compiler.disable  # a foreign function on host memory: always eager, also inside a compiled step
def _native_dirichlet(lib, rows, m, alpha, generator) -> Tensor:
    seed = native_seed(generator)
    lam = torch.empty(rows, m, dtype=torch.float32)
    native.dirichlet(lib, lam.numpy(), alpha, seed)  # on torch's threads; the same Λ for any number
    return lam


@torch.compiler.disable  # numpy bit streams and host-side block loops: always eager, also inside a compiled step
def _cpu_dirichlet(rows, m, alpha, generator, dtype) -> Tensor:
    return _CpuDirichlet(rows, m, alpha, generator, dtype).sample()


# ---------------------------------------------------------------------------
# device-generic: torch's gamma kernel, no host synchronisation
# ---------------------------------------------------------------------------


def _torch_dirichlet(rows, m, alpha, generator, device, dtype) -> Tensor:
    tiny = torch.finfo(dtype).tiny
    shape = torch.full((rows, m), alpha + 1.0 if alpha < 1 else alpha, device=device, dtype=dtype)
    log_w = torch._standard_gamma(shape, generator=generator).clamp_min_(tiny).log_()
    if alpha < 1:  # Gamma(α) = Gamma(α + 1)·U^{1/α}, in log space so that tiny α cannot underflow
        u = torch.rand(rows, m, generator=generator, device=device, dtype=dtype).clamp_min_(tiny)
        log_w.add_(u.log_(), alpha=1.0 / alpha)
    return _softmax_without_subnormals(log_w)


def masked_dirichlet_rows(rows: int, mask: Tensor, concentration: float, *,
                          generator: Optional[torch.Generator]) -> Tensor:
    """(rows, m) float32 i.i.d. rows that are Dir(A/k · 1_k) on the k True entries of ``mask`` (m,) bool and 0
    elsewhere (A = ``concentration``; all-zero rows when k = 0), drawn on the generator's device, or the mask's.

    k stays on the device: α = A/k is a 0-d tensor, and Gamma(α) = Gamma(α + 1)·U^{1/α} (exact for every α > 0)
    is drawn with torch's gamma kernel in log space, so nothing is read back (no host–device synchronisation).
    The row softmax floors weights at ≈ e·tiny·m of the row's largest kept one, as everywhere.
    """
    device = generator.device if generator is not None else mask.device
    keep = mask.to(device=device, dtype=torch.bool)
    tiny = torch.finfo(torch.float32).tiny
    alpha = concentration / keep.sum(dtype=torch.float32).clamp_min(1.0)  # 0-d, on the device
    shape = (alpha + 1.0).expand(rows, keep.shape[0]).contiguous()
    log_w = torch._standard_gamma(shape, generator=generator).clamp_min_(tiny).log_()
    u = torch.rand(rows, keep.shape[0], generator=generator, device=device).clamp_min_(tiny)
    log_w.add_(u.log_().div_(alpha))
    # left-out entries are set far below any kept one before the row maximum is taken, and zeroed after the floor
    log_w.masked_fill_(~keep, torch.finfo(torch.float32).min)
    lam = _softmax_without_subnormals(log_w).mul_(keep)
    return lam.div_(lam.sum(dim=1, keepdim=True).clamp_min_(tiny)).to(mask.device)


def _softmax_without_subnormals(log_w: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """Row softmax of log_w (n, m) into ``out`` (default: in place), each weight floored at ≈ e·tiny·m of its row
    maximum.

    Small α puts most log-weights hundreds of units below the row maximum;
    their exponentials would be subnormal, and subnormal arithmetic is several
    times slower on x86 CPUs (here and in every product with Λ). The floor
    (≈ 1e-36 of the largest weight in float32) is far below what the row sum
    can resolve.
    """
    floor = native.log_weight_floor(log_w.shape[1], torch.finfo(log_w.dtype).tiny)
    w = torch.sub(log_w, log_w.amax(dim=1, keepdim=True), out=log_w if out is None else out)
    w.clamp_min_(floor).exp_()
    return w.mul_(w.sum(dim=1, keepdim=True).reciprocal_())


# ---------------------------------------------------------------------------
# CPU: numpy's SFC64 bits, block by block
# ---------------------------------------------------------------------------


_SCRATCH = threading.local()


def _scratch(name: str, dtype, size: int) -> np.ndarray:
    """The (size,) work array ``name`` of this thread, reused from call to call.

    Fresh megabytes cost a page fault per 4 KB at first touch (≈ 3 ns per
    float32 entry here, as much as the sampling itself); the ≈ 2 MB kept per
    thread avoid it.
    """
    arrays = getattr(_SCRATCH, "arrays", None)
    if arrays is None:
        arrays = _SCRATCH.arrays = {}
    key = name, np.dtype(dtype)
    if key not in arrays or arrays[key].size < size:
        arrays[key] = np.empty(size, dtype=dtype)
    return arrays[key][:size]


class _CpuDirichlet:
    """One call's CPU sampling: the bit stream and the work arrays.

    ``candidates(out)`` fills ``out`` (k,) with k candidates (log-weights up to
    a constant when ``log_space``, else weights, negated at α = 1) and returns
    the sorted indices of the rejected ones.
    """

    def __init__(self, rows: int, m: int, alpha: float, generator, dtype: torch.dtype):
        self.rows, self.m, self.alpha, self.dtype = rows, m, alpha, dtype
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))  # a CPU generator: no device sync
        self.bits = np.random.SFC64(seed)
        self.wide = dtype == torch.float64
        self.scale = 2.0 ** (-63 if self.wide else -32)  # U = word·scale
        self.block_rows = max(1, min(rows, BLOCK_ENTRIES // m))
        self.block = self.block_rows * m
        np_dtype = np.float64 if self.wide else np.float32
        self.log_space = alpha < 1.0
        # acceptance rates size the spare candidates only; Marsaglia–Tsang's, fitted (slightly low) on α ∈ [1, 50]
        if alpha < 1.0:
            self.acceptance = math.exp(math.lgamma(1.0 + alpha) + alpha - (1.0 + alpha) * math.log1p(alpha))
        elif alpha == 1.0:
            self.acceptance = 1.0
        else:
            self.acceptance = 1.0 - 0.034 / (alpha - 1.0 / 3.0) ** 1.05
        most = self.block + self._spare_count(self.block)
        work = _scratch("work", np_dtype, 4 * most + 2)
        self.scratch = torch.from_numpy(work[:2 * most + 2]), torch.from_numpy(work[2 * most + 2:3 * most + 2])
        self.candidate_buffer = torch.from_numpy(work[3 * most + 2:4 * most + 2])
        self.flags = _scratch("flags", np.bool_, most)
        if alpha == 1.0:
            self.candidates: Callable[[Tensor], np.ndarray] = self._exponential
        elif alpha < 1.0:
            self.candidates = self._log_gamma_small
        else:
            self.candidates = self._gamma_large
            self.d = alpha - 1.0 / 3.0
            self.c = 1.0 / math.sqrt(9.0 * self.d)

    # -- random bits ------------------------------------------------------------------------

    def _uniform_words(self, out: Tensor) -> Tensor:
        """Fill ``out`` with random integers in [0, 2^32) ([0, 2^63) in float64 work), as floats.

        Bits are drawn in pieces of ``PIECE_WORDS`` (a fresh megabyte from numpy is a page fault per 4 KB;
        small arrays are recycled by malloc), and torch converts unsigned 32-bit words to float32 at twice
        numpy's speed.
        """
        per_word = 1 if self.wide else 2
        step = PIECE_WORDS * per_word
        for start in range(0, out.numel(), step):
            piece = out[start:start + step]
            raw = self.bits.random_raw(-(-piece.numel() // per_word))
            if self.wide:
                words = np.bitwise_and(raw.view(np.int64), 2**63 - 1, out=raw.view(np.int64))
            else:
                words = raw.view(np.uint32)[:piece.numel()]
            piece.copy_(torch.from_numpy(words))
        return out

    def _log_uniforms(self, out: Tensor) -> Tensor:
        """Fill ``out`` with log U ≤ 0 of uniforms U = word / 2^32 (2^63 in float64 work); −inf for a zero word.

        Scaling before the logarithm keeps log U accurate near U = 1 (log(word) − log 2^32 would cancel to
        ~1e-6 absolute in float32, which at α = 1/128 would be 1e-4 of a weight).
        """
        return self._uniform_words(out).mul_(self.scale).log_()

    # -- candidates: fill `out`, return the sorted indices of the rejected entries -------------

    def _exponential(self, out: Tensor) -> np.ndarray:
        """α = 1: weights E = −log U, exact without rejection, kept as log U = −E ≤ 0 (the row normalisation
        divides by the row sum, so the sign cancels and no pass negates them)."""
        self._log_uniforms(out)
        if math.isinf(float(out.sum())):  # a zero word (p = 2^-32 per entry): log U = −inf, drawn again
            return np.flatnonzero(np.isinf(out.numpy()))
        return NONE_REJECTED

    def _log_gamma_small(self, out: Tensor) -> np.ndarray:
        """α < 1: log Gamma(α) up to a constant, s = E − W/α, from two exponentials E, W per candidate.

        Gamma(1 + α) by rejection from the proposal (1 + α)·E, E ~ Exp(1): the
        density ratio is ∝ (E e^{1−E})^α, so a candidate is accepted when
        W ≥ α (E − 1 − log E), W ~ Exp(1) (acceptance Γ(1+α) e^α / (1+α)^{1+α}:
        0.996 at α = 1/128, 0.90 at α = 0.2, 0.68 as α → 1). Given acceptance,
        W − α (E − 1 − log E) is again Exp(1) and independent of E, so it serves
        as the boost U^{1/α} of Gamma(α) = Gamma(1 + α)·U^{1/α}:
        log Gamma(α) = log(1 + α) − 1 + E − W/α, and the row softmax drops the
        constant. The acceptance reads s − log E ≤ 1.
        """
        count = out.numel()
        log_u = self._log_uniforms(self.scratch[0][:2 * count])
        e = torch.neg(log_u[:count], out=self.scratch[1][:count])  # E
        torch.add(e, log_u[count:], alpha=1.0 / self.alpha, out=out)  # s = E − W/α (W = −log U_w)
        test = torch.sub(out, e.log_(), out=e)  # E = +inf (zero word) gives NaN: rejected below
        accepted = np.less_equal(test.numpy(), 1.0, out=self.flags[:count])
        return np.flatnonzero(np.logical_not(accepted, out=accepted))

    def _gamma_large(self, out: Tensor) -> np.ndarray:
        """α > 1: Marsaglia & Tsang (2000): weight v = (1 + c x)³ with x ~ N(0, 1) (Box–Muller), accepted when
        log U < x²/2 + d − d v + d log v, d = α − 1/3, c = 1/√(9d) (acceptance 0.95 at α = 1, 0.994 at α = 5)."""
        count, d, c = out.numel(), self.d, self.c
        half = (count + 1) // 2
        buf, spare = self.scratch
        radius = self._log_uniforms(buf[:half]).mul_(-2.0).sqrt_()  # √(−2 log U)
        angle = self._uniform_words(buf[half:2 * half]).mul_(2.0 * math.pi * self.scale)
        sine = torch.sin(angle, out=spare[:half])
        angle.cos_().mul_(radius)
        radius.mul_(sine)
        x = buf[:count]  # buf[:2·half] = (r sin θ, r cos θ): 2·half normals
        log_a = self._log_uniforms(spare[:count])
        test = torch.mul(x, x, out=buf[2 * half:2 * half + count])  # x²
        t = x.mul_(c).add_(1.0)
        v = torch.pow(t, 3, out=out)
        # accept ⟺ 2 log U < x² + 2d − 2dv + 6d log t ⟺ x² + 6d log t − 2dv − 2 log U > −2d; t ≤ 0 (log t
        # NaN or −inf) and the zero word of a radius (x infinite) fail the comparison: rejected
        test.add_(t.log_(), alpha=6.0 * d).sub_(v, alpha=2.0 * d).sub_(log_a, alpha=2.0)
        accepted = np.greater(test.numpy(), -2.0 * d, out=self.flags[:count])
        return np.flatnonzero(np.logical_not(accepted, out=accepted))

    # -- the call -----------------------------------------------------------------------------

    def _spare_count(self, count: int) -> int:
        """Candidates drawn beyond a block of ``count`` so that its rejections are almost always replaced from
        the same draw: expected rejections plus ``SPARE_SIGMAS`` standard deviations, over the acceptance."""
        expected = (1.0 - self.acceptance) * count
        if expected == 0:
            return 0
        return max(0, int((expected + SPARE_SIGMAS * math.sqrt(expected) + 8.0) / self.acceptance))

    def _more_spares(self, count: int) -> np.ndarray:
        """``count`` more accepted candidates (rarely needed: when a block's own spares fall short)."""
        found = []
        while count > 0:
            fresh = torch.from_numpy(np.empty(min(self.block, int(count / self.acceptance) + 64),
                                              dtype=self.candidate_buffer.numpy().dtype))
            keep = np.ones(fresh.numel(), dtype=bool)
            keep[self.candidates(fresh)] = False
            found.append(fresh.numpy()[keep][:count])
            count -= found[-1].size
        return np.concatenate(found)

    def sample(self) -> Tensor:
        """Each block: candidates for its entries and a few spares in one draw; rejected entries take the next
        accepted spares in order (an i.i.d. stream, so each entry keeps the exact law); then the row
        normalisation writes the block of Λ."""
        lam = torch.empty(self.rows, self.m, dtype=self.dtype)
        for start in range(0, self.rows, self.block_rows):
            block = lam[start:start + self.block_rows]
            count = block.numel()
            candidates = self.candidate_buffer[:count + self._spare_count(count)]
            rejected = self.candidates(candidates)
            inside = rejected[:np.searchsorted(rejected, count)]
            if inside.size:
                values = candidates.numpy()
                spare = np.ones(values.size - count, dtype=bool)
                spare[rejected[inside.size:] - count] = False
                good = np.flatnonzero(spare)[:inside.size] + count
                replacement = values[good]
                if good.size < inside.size:
                    replacement = np.concatenate([replacement, self._more_spares(inside.size - good.size)])
                values[inside] = replacement
            source = candidates[:count].view(block.shape)
            if self.log_space:
                _softmax_without_subnormals(source, out=block)
            else:
                torch.mul(source, source.sum(dim=1, keepdim=True).reciprocal_(), out=block)
        return lam
