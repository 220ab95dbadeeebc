"""The law of Λ: every row exactly Dir(α·1_m), rows independent, on every sampler (fused, eager CPU, device-generic).

Marginals are tested with Kolmogorov–Smirnov against Beta(α, (m−1)α), moments
against the closed form, and each statistical test is also run on a
deliberately wrong law (α doubled) to show that it can fail. Seeds are fixed;
thresholds (p > 1e-4, 5 standard errors) leave a wide margin.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import multimix.functional as MF
from multimix import native, sampling

from sync_counter import SyncCounter

# "native" is the fused sampler (float32 only; test_native.py makes sure it compiled where it can), "eager" the CPU
# tensor passes, "torch" the device-generic path
METHODS = ["native", "eager", "torch"]
BOUNDS = {torch.float64: (1e-280, 1 - 1e-12), torch.float32: (1e-30, 1 - 1e-5)}  # where each dtype resolves the law


def dtype_for(method):
    return torch.float32 if method == "native" else torch.float64


def draw(n, m, alpha, method="eager", seed=0, dtype=None):
    if method == "native" and native.kernels() is None:
        pytest.skip("the fused sampler did not compile here")
    dtype = dtype or dtype_for(method)
    return MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(seed), dtype=dtype, method=method)


def marginal_ks_pvalue(values: np.ndarray, a: float, b: float, lo: float, hi: float) -> float:
    """KS p-value of ``values`` against Beta(a, b) conditioned on [lo, hi].

    Tiny α puts mass below any float's range (and within an ulp of 1), where
    values are floored or rounded; conditioning on [lo, hi] tests the law
    exactly where the floats can represent it.
    """
    beta = stats.beta(a, b)
    f_lo, f_hi = beta.cdf(lo), beta.cdf(hi)
    kept = values[(values >= lo) & (values <= hi)]
    assert kept.size > 2000, kept.size
    return stats.kstest(kept, lambda x: (beta.cdf(x) - f_lo) / (f_hi - f_lo)).pvalue


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha,m", [(1e-3, 16), (1 / 128, 128), (0.05, 16), (0.2, 16), (0.7, 8), (1.0, 16),
                                     (1.5, 8), (5.0, 16)])
def test_marginals_are_beta(method, alpha, m):
    """λ_i ~ Beta(α, (m−1)α) for the first and the last column: KS conditioned on where the dtype resolves the law
    (float64: [1e-280, 1 − 1e-12]; float32, the fused sampler's: [1e-30, 1 − 1e-5]), and the mass below it."""
    n = 12000 if m == 128 else 20000
    if method == "native" and alpha * m < 0.1:
        n *= 4  # float32 resolves only ~7% of Beta(1e-3, 0.015)'s mass: more rows for as many kept values
    lo, hi = BOUNDS[dtype_for(method)]
    lam = draw(n, m, alpha, method, seed=2).double().numpy()
    b = (m - 1) * alpha
    below = stats.beta(alpha, b).cdf(lo)
    for column in (0, m - 1):
        assert marginal_ks_pvalue(lam[:, column], alpha, b, lo, hi) > 1e-4
        assert abs((lam[:, column] < lo).mean() - below) <= 5 * math.sqrt(below * (1 - below) / n) + 1e-4
    wrong = draw(n, m, 2 * alpha, method, seed=1).double().numpy()  # the same tests must reject a different law
    assert (marginal_ks_pvalue(wrong[:, 0], alpha, b, lo, hi) < 1e-4
            or abs((wrong[:, 0] < lo).mean() - below) > 5 * math.sqrt(below * (1 - below) / n) + 1e-4)


@pytest.mark.parametrize("method", ["eager", "torch"])
@pytest.mark.parametrize("alpha", [1 / 128, 0.05, 1.0, 5.0])
def test_float32_marginals_are_beta(method, alpha):
    """The float32 work of the other samplers has the same law where float32 resolves it: [1e-30, 1 − 1e-5]."""
    m, n = 128, 12000
    lam = draw(n, m, alpha, method, dtype=torch.float32).double().numpy()
    assert marginal_ks_pvalue(lam[:, 0], alpha, (m - 1) * alpha, *BOUNDS[torch.float32]) > 1e-4
    wrong = draw(n, m, 2 * alpha, method, seed=1, dtype=torch.float32).double().numpy()
    assert marginal_ks_pvalue(wrong[:, 0], alpha, (m - 1) * alpha, *BOUNDS[torch.float32]) < 1e-4


def moment_z_scores(lam: np.ndarray, alpha: float) -> tuple:
    """(z of Var λ_0, z of Cov(λ_0, λ_1)) against the closed form, in standard errors of the row means."""
    n, m = lam.shape
    big_a = m * alpha
    var = alpha * (big_a - alpha) / (big_a**2 * (big_a + 1))
    cov = -(alpha**2) / (big_a**2 * (big_a + 1))
    centred = lam - 1.0 / m  # E λ_i = 1/m exactly, so each row gives an i.i.d. term
    z = []
    for terms, expected in ((centred[:, 0] ** 2, var), (centred[:, 0] * centred[:, 1], cov)):
        z.append((terms.mean() - expected) / (terms.std() / math.sqrt(n)))
    return tuple(z)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [1e-3, 0.02, 0.3, 1.0, 3.0])
def test_variance_and_covariance_match_closed_form(method, alpha):
    """Var λ_i = α(A − α)/(A²(A + 1)), Cov(λ_i, λ_j) = −α²/(A²(A + 1)), A = mα."""
    m, n = 8, 40000
    z_var, z_cov = moment_z_scores(draw(n, m, alpha, method).double().numpy(), alpha)
    assert abs(z_var) < 5 and abs(z_cov) < 5, (z_var, z_cov)
    if m * alpha >= 0.1:  # below, doubling α moves the moments by less than 1% (the KS test above sees it)
        z_wrong = moment_z_scores(draw(n, m, 2 * alpha, method, seed=1).double().numpy(), alpha)
        assert max(map(abs, z_wrong)) > 5, z_wrong


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# 1/3: the boundary of Marsaglia–Tsang's d = α − 1/3 (once a division by zero in the spare-count estimate)
@pytest.mark.parametrize("alpha", [1e-4, 1e-3, 1 / 128, 0.3, 1 / 3, 1.0, 7.0, 1e4])
def test_rows_finite_on_the_simplex_without_subnormals(method, dtype, alpha):
    if method == "native" and dtype == torch.float64:
        pytest.skip("the fused sampler works in float32")
    m = 128
    lam = draw(300, m, alpha, method, dtype=dtype)
    assert lam.dtype == dtype and lam.shape == (300, m)
    assert torch.isfinite(lam).all() and (lam >= 0).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(300, dtype=dtype), atol=1e-5, rtol=0)
    tiny = torch.finfo(dtype).tiny
    assert ((lam == 0) | (lam >= tiny)).all(), "subnormal weights (slow x86 arithmetic downstream)"


@pytest.mark.parametrize("method", METHODS)
def test_tiny_alpha_rows_are_near_one_hot(method):
    """m·α ≪ 1: almost all the mass sits on one example; P(max λ > t) matches torch.distributions."""
    m, n, alpha = 128, 4000, 1e-4
    ours = draw(n, m, alpha, method).double().max(1).values
    ref = torch.distributions.Dirichlet(torch.full((m,), alpha, dtype=torch.float64)).sample((n,)).max(1).values
    for t in (0.9, 0.999):
        p_ours, p_ref = (ours > t).double().mean().item(), (ref > t).double().mean().item()
        assert abs(p_ours - p_ref) < 5 * math.sqrt(p_ref * (1 - p_ref) / n) + 0.003


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [0.01, 0.5, 2.0])
def test_rows_are_independent(method, alpha):
    """Rows from one call are independent: no correlation between neighbouring rows, or rows a block (eager) or
    a stream (fused) apart, and (continuous law) no value repeated, so no rejected entry reuses a spare twice."""
    m = 64
    n = 3 * sampling.BLOCK_ENTRIES // m + 7  # several CPU blocks, or fused streams, and a partial one
    lam = draw(n, m, alpha, method).numpy()
    for lag in (1, sampling.BLOCK_ENTRIES // m, native.rows_per_stream(m)):
        for stat in (lam[:, 0], lam.max(1)):
            r = np.corrcoef(stat[:-lag], stat[lag:])[0, 1]
            assert abs(r) < 5 / math.sqrt(n - lag), (lag, r)
    if alpha >= 0.5 and lam.dtype == np.float64:  # no weights at the floor: distinct values (float32 has ties)
        assert np.unique(lam).size == lam.size


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha", [0.05, 1.0, 3.0])
def test_deterministic_given_a_generator_and_no_global_rng(method, alpha):
    state = torch.get_rng_state()
    a = draw(500, 32, alpha, method, seed=7, dtype=torch.float32)
    b = draw(500, 32, alpha, method, seed=7, dtype=torch.float32)
    assert torch.equal(torch.get_rng_state(), state), "sampling with a generator touched the global RNG"
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(500, 32, alpha, method, seed=8, dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows(dtype):
    lam = draw(64, 1024, 1e-3, "auto", dtype=dtype)
    assert lam.dtype == dtype and torch.isfinite(lam).all() and (lam >= 0).all()
    torch.testing.assert_close(lam.float().sum(1), torch.ones(64), atol=2e-2, rtol=0)


def test_method_is_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        MF.dirichlet(4, 4, 1.0, method="numpy")


@pytest.mark.parametrize("alpha", [1e-3, 0.3, 1.0, 4.0])
@pytest.mark.parametrize("rows_per_draw", [1, 4])
def test_device_generic_path_never_reads_back(alpha, rows_per_draw):
    """The path used off the CPU, forced on the CPU, makes no call that would synchronise a GPU."""
    g = torch.Generator().manual_seed(0)  # the seed draw of the CPU path is the one read allowed on a CPU
    with SyncCounter() as counter:
        lam = MF.dirichlet(1000, 128, alpha, generator=g, method="torch", rows_per_draw=rows_per_draw)
    assert counter.calls == []
    assert lam.shape == (1000, 128)


def test_sync_counter_sees_reads():
    """The counter above can fail: it sees the reads of the previous implementation's rejection loop, and a
    boolean-mask index (a count read inside the kernel)."""
    x = torch.rand(100)
    with SyncCounter() as counter:
        int(torch.count_nonzero(x > 0.5))
        bool((x > 2).any())
        x.max().item()
    python = [call for call in counter.calls if not call.startswith("aten.")]
    assert python == ["count_nonzero", "__int__", "__bool__", "item"]
    assert counter.calls.count("aten._local_scalar_dense.default") == 3  # int, bool, item below Python
    with SyncCounter() as counter:
        x[x > 0.5]
    assert counter.calls == ["aten.index.Tensor (boolean mask)"]
    with SyncCounter() as counter:
        x.masked_fill(x > 0.5, 0.0).sum()
    assert counter.calls == []


@pytest.mark.parametrize("alpha", [0.3, 2.0])
def test_law_holds_when_a_blocks_spares_fall_short(monkeypatch, alpha):
    """Without spare candidates every rejection is replaced by a later draw: still the exact law."""
    monkeypatch.setattr(sampling, "SPARE_SIGMAS", -1e9)  # no spares at all
    m, n = 16, 20000
    lam = draw(n, m, alpha, "eager", seed=4).numpy()
    torch.testing.assert_close(torch.from_numpy(lam.sum(1)), torch.ones(n, dtype=torch.float64))
    assert marginal_ks_pvalue(lam[:, 0], alpha, (m - 1) * alpha, 1e-280, 1 - 1e-12) > 1e-4
    assert max(map(abs, moment_z_scores(lam, alpha))) < 5


def test_backend_without_a_gamma_kernel_falls_back_to_the_cpu_sampler(monkeypatch):
    """Where torch has no gamma kernel (MPS), Λ is drawn by the CPU sampler from a seed of the given generator."""
    def missing(*args, **kwargs):
        raise NotImplementedError("aten::_standard_gamma is not implemented for this backend")

    monkeypatch.setattr(torch, "_standard_gamma", missing)
    a = draw(2000, 8, 0.4, "torch", seed=5)
    b = draw(2000, 8, 0.4, "torch", seed=5)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    torch.testing.assert_close(a.sum(1), torch.ones(2000, dtype=torch.float64))
    assert abs(moment_z_scores(a.numpy(), 0.4)[0]) < 5


@pytest.mark.parametrize("alpha", [0.05, 1.0, 3.0])
def test_a_zero_random_word_is_drawn_again(monkeypatch, alpha):
    """Eager sampler: a zero word (U = 0, log U = −inf; p = 2^-32 per entry) is replaced, never turned into inf or
    NaN. (The fused sampler's uniforms are cell midpoints, never 0.)"""

    sfc64 = np.random.SFC64

    class ZeroFirstWords:
        def __init__(self, seed):
            self.bits, self.first = sfc64(seed), True

        def random_raw(self, size):
            raw = self.bits.random_raw(size)
            if self.first:
                raw[:6] = 0  # twelve zero 32-bit words at the start of the first block
                self.first = False
            return raw

    monkeypatch.setattr(sampling.np.random, "SFC64", ZeroFirstWords)
    lam = MF.dirichlet(64, 16, alpha, generator=torch.Generator().manual_seed(0), method="eager")
    assert torch.isfinite(lam).all() and (lam >= 0).all()
    torch.testing.assert_close(lam.sum(1), torch.ones(64))
    assert (lam[0] > 0).sum() >= (2 if alpha >= 1 else 1)  # the first row is a real draw, not a zero-word artefact


@pytest.mark.parametrize("concentration,keep", [(1.0, 16), (0.5, 5), (12.0, 6)])
def test_masked_rows_are_dirichlet_over_the_kept_columns_and_zero_elsewhere(concentration, keep):
    """functional.masked_dirichlet: rows Dir(A/k·1_k) on the k kept columns (α = A/k on the device, below and
    above 1), exact zeros on the others, on the simplex; the same KS test rejects α doubled."""
    m = 24
    mask = torch.zeros(m, dtype=torch.bool)
    mask[torch.randperm(m, generator=torch.Generator().manual_seed(keep))[:keep]] = True
    lam = MF.masked_dirichlet(20_000, mask, concentration, generator=torch.Generator().manual_seed(1))
    assert lam.dtype == torch.float32 and torch.equal(lam[:, ~mask], torch.zeros(20_000, m - keep))
    torch.testing.assert_close(lam.sum(1), torch.ones(20_000))
    alpha = concentration / keep
    lo, hi = BOUNDS[torch.float32]
    column = lam[:, mask][:, 0].numpy()
    assert marginal_ks_pvalue(column, alpha, (keep - 1) * alpha, lo, hi) > 1e-4
    assert marginal_ks_pvalue(column, 2 * alpha, (keep - 1) * 2 * alpha, lo, hi) < 1e-4
    kept = lam[:, mask].double()
    assert abs(kept[:, 0].var().item() - (keep - 1) / (keep * keep * (keep * alpha + 1))) < 5 * 0.02 / keep


def test_masked_rows_read_nothing_back_and_an_empty_part_gives_zero_rows():
    mask = torch.tensor([True, False, True, True, False])
    with SyncCounter() as counter, MF.device_generic():
        lam = MF.masked_dirichlet(50, mask, 1.0, generator=torch.Generator().manual_seed(0))
        perm = MF.permutation_within(mask, generator=torch.Generator().manual_seed(0))
    assert counter.calls == [] and torch.isfinite(lam).all()
    assert torch.equal(MF.masked_dirichlet(3, torch.zeros(4, dtype=torch.bool), 1.0), torch.zeros(3, 4))
    assert torch.equal(mask[perm], mask) and sorted(perm.tolist()) == list(range(5))
    for bad in (torch.ones(2, 3, dtype=torch.bool), torch.ones(4), torch.zeros(0, dtype=torch.bool)):
        with pytest.raises(ValueError, match="^mask must be a non-empty 1-D bool tensor"):
            MF.masked_dirichlet(3, bad, 1.0)


def test_permutation_within_is_uniform_inside_each_part():
    """Every True row goes to each True row with probability 1/k (and likewise for the False rows): chi-square
    over 6,000 draws of the partner of one row in each part."""
    mask = torch.tensor([True, False, True, False, False, True, True, False])
    generator = torch.Generator().manual_seed(5)
    partners = torch.stack([MF.permutation_within(mask, generator=generator) for _ in range(6000)])
    assert (mask[partners] == mask).all()
    for row in (0, 1):
        part = torch.nonzero(mask == mask[row]).flatten()
        counts = [(partners[:, row] == j).sum().item() for j in part]
        assert stats.chisquare(counts).pvalue > 1e-4, counts
