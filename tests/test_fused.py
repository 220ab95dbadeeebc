"""The mixed losses in one pass (multimix.fused): the same Λ, loss and gradient as sampling Λ and mixing it."""

import pytest
import torch

import multimix
import multimix.functional as MF
from multimix import fused, losses, native

pytestmark = pytest.mark.skipif(native.kernels() is None, reason="the compiled kernels are unavailable here "
                                "(tests/test_native.py checks that they compile wherever cc and libmvec exist)")


def operands(m, c, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, c, generator=g) * scale
    targets = torch.softmax(torch.randn(m, c, generator=g) * 2, dim=1)
    return logits, targets


def three_products(logits, targets, n, alpha, generator):
    """The plain form: Λ sampled, then mixed and scored."""
    lam = MF.dirichlet(n, logits.shape[0], alpha, generator=generator)
    return MF.soft_cross_entropy(*MF.interpolate_pair(lam, logits, targets))


def loss_and_grad(fn, logits, targets, n, alpha, seed):
    leaf = logits.detach().clone().requires_grad_()
    generator = torch.Generator().manual_seed(seed)
    loss = fn(leaf, targets, n, alpha, generator)
    loss.backward()
    return loss.detach(), leaf.grad, generator


def one_pass(logits, targets, n, alpha, generator):
    assert fused.applies(logits, targets, alpha, generator, True)
    return MF.mixed_cross_entropy(logits, targets, n, alpha, generator=generator)


@pytest.mark.parametrize("n, m, c, alpha", [
    (1000, 128, 10, 1 / 128),  # the default concentration: about 20 of 128 entries kept per row
    (20_000, 128, 10, 1 / 128),  # several streams and groups of partial sums, shared between threads
    (777, 50, 7, 3.0),  # α > 1: Marsaglia–Tsang
    (2000, 96, 16, 1.0),  # α = 1; c = 16: operand rows wider than the register path
    (300, 64, 37, 0.05),
    (5, 3, 2, 0.5),
    (40, 1, 3, 1.0),  # one example: every row is 1
])
def test_one_pass_gives_the_three_products_loss_and_gradient_with_the_same_lambda(n, m, c, alpha):
    logits, targets = operands(m, c)
    ours, grad, g_ours = loss_and_grad(one_pass, logits, targets, n, alpha, seed=5)
    ref, ref_grad, g_ref = loss_and_grad(three_products, logits, targets, n, alpha, seed=5)
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5 * float(ref_grad.abs().max()))
    assert torch.equal(g_ours.get_state(), g_ref.get_state())  # one draw of the generator, as the sampler's


def test_an_example_of_far_larger_magnitude_keeps_its_share_of_a_row():
    """The cut-off scales with the spread of the examples' magnitudes. One row in which example 7, with logits
    10⁹ times the others', has a weight of 10⁻¹³–10⁻¹⁰ (below 2^-24/m of the row's largest, but 10⁻⁴–0.1 of
    the mixed logits): its share is kept, as in the plain form."""
    m, alpha = 128, 1 / 128
    seed = next(s for s in range(2000) if 1e-13 < float(MF.dirichlet(1, m, alpha, generator=torch.Generator()
                                                                       .manual_seed(s))[0, 7]) < 1e-10)
    logits = torch.zeros(m, 10)
    logits[7, 3] = 1e9
    targets = torch.eye(10)[torch.arange(m) % 10]
    ours, grad, _ = loss_and_grad(one_pass, logits, targets, 1, alpha, seed)
    ref, ref_grad, _ = loss_and_grad(three_products, logits, targets, 1, alpha, seed)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5 * float(ref_grad.abs().max()))


def test_the_result_does_not_depend_on_the_thread_count():
    logits, targets = operands(128, 10)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(loss_and_grad(one_pass, logits, targets, 50_000, 1 / 128, seed=2)[:2])
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_positions_with_weights_are_dense_multimix_and_its_pooled_term():
    """R positions with weights a: the per-position mix λ_i a_ip / Σ λ a of Dense MultiMix
    (functional.dense_interpolate) at each position, and a last position with a = 1 for the pooled term."""
    m, c, r, n, alpha = 64, 7, 4, 1500, 0.5 / 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, c, r, generator=g, requires_grad=True)
    y = torch.softmax(torch.randn(m, c, generator=g), dim=1)
    a = torch.softmax(torch.randn(m, r, generator=g) * 4, dim=1)
    lam = MF.dirichlet(n, m, alpha, generator=torch.Generator().manual_seed(9))
    dense = MF.soft_cross_entropy(MF.dense_interpolate(lam, a, x), MF.dense_interpolate(
        lam, a, y.unsqueeze(2).expand(-1, -1, r)))
    pooled = MF.soft_cross_entropy(*MF.interpolate_pair(lam, x.mean(dim=2), y))
    (dense + 3 * pooled).backward()
    leaf = x.detach().clone().requires_grad_()
    work = torch.cat([leaf.transpose(1, 2), leaf.mean(dim=2).unsqueeze(1)], dim=1)  # (m, r + 1, c)
    targets = y.unsqueeze(1).expand(-1, r + 1, -1)
    weights = torch.cat([a, torch.ones(m, 1)], dim=1)
    out = fused.position_cross_entropy(work, targets, n, alpha, torch.Generator().manual_seed(9), weights)
    assert out.shape == (r + 1,)
    (out[:r].mean() + 3 * out[r]).backward()
    torch.testing.assert_close(out[:r].mean(), dense.detach(), rtol=2e-6, atol=0)
    torch.testing.assert_close(out[r], pooled.detach(), rtol=2e-6, atol=0)
    torch.testing.assert_close(leaf.grad, x.grad, rtol=0, atol=1e-5 * float(x.grad.abs().max()))


@pytest.mark.parametrize("attention", ["self", "cam", "uniform"])
def test_dense_multimix_in_one_pass_equals_sampling_then_mixing(attention):
    """Class attention has exact zeros: they count as dense_interpolate counts them."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 8, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (32,), generator=g)
    head = torch.nn.Linear(8, 4)
    settings = dict(attention=attention, clean_weight=0.5)
    mix = multimix.DenseMultiMix(200, generator=torch.Generator().manual_seed(3), **settings)
    ours = mix(z, y, head)
    (grad,) = torch.autograd.grad(ours, z)
    lam = multimix.DenseMultiMix(200, generator=torch.Generator().manual_seed(3), **settings).sample_lam(32)
    ref = multimix.DenseMultiMix(200, **settings)(z, y, head, lam=lam)
    (ref_grad,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5 * float(ref_grad.abs().max()))


def test_low_precision_logits_take_the_one_pass_in_float32():
    logits, targets = operands(128, 10)
    half = logits.bfloat16().requires_grad_()
    loss = MF.mixed_cross_entropy(half, targets, 500, 1 / 128, generator=torch.Generator().manual_seed(4))
    loss.backward()
    ref, ref_grad, _ = loss_and_grad(three_products, half.detach().float(), targets, 500, 1 / 128, seed=4)
    assert loss.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.detach(), ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(half.grad.float(), ref_grad, rtol=1e-2, atol=1e-2 * float(ref_grad.abs().max()))


def test_other_cases_take_the_three_products():
    """Targets with gradient, float64, and the device-generic path: sample Λ, then mix (equal to the plain form)."""
    logits, targets = operands(16, 3)
    soft = targets.clone().requires_grad_()
    assert not fused.applies(logits, soft, 0.1, None, True)
    loss = MF.mixed_cross_entropy(logits, soft, 50, 0.1, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert not fused.applies(logits.double(), targets, 0.1, None, True)
    double = MF.mixed_cross_entropy(logits.double(), targets, 50, 0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(double, three_products(logits.double(), targets, 50, 0.1,
                                                      torch.Generator().manual_seed(0)))
    with MF.device_generic():
        assert not fused.applies(logits, targets, 0.1, None, MF.on_host(logits))
        generic = MF.mixed_cross_entropy(logits, targets, 50, 0.1, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(generic, three_products(logits, targets, 50, 0.1, torch.Generator().manual_seed(0)))


def test_a_method_with_another_criterion_keeps_its_logits_terms(tiny_model, tiny_batch):
    x, y = tiny_batch
    default = multimix.create_method("multimix", n=32, generator=torch.Generator().manual_seed(0))
    assert default.terms(tiny_model, x, y)[0].value is not None  # the one pass
    bce = multimix.create_method("multimix", n=32, criterion=losses.bce_with_logits,
                                 generator=torch.Generator().manual_seed(0))
    mixed = bce.terms(tiny_model, x, y)[0]
    assert mixed.value is None and mixed.logits.shape == (32, 4)


def test_dense_multimix_falling_back_applies_the_head_once_per_step(tiny_model, tiny_batch):
    """Dense MultiMix qualifies for the one pass but falls back in float64: the per-position logits computed for
    the one pass serve the sampled Λ's mix too (one head call for the clean and mixed terms, none repeated)."""
    x, y = tiny_batch
    model = tiny_model.double()
    calls = []
    model.head.register_forward_hook(lambda *_: calls.append(1))
    method = multimix.create_method("dense_multimix", n=16, clean_weight=1.0, pooled_weight=0.0,
                                    generator=torch.Generator().manual_seed(0))
    terms = method.terms(model, x.double(), y)
    assert all(t.value is None for t in terms)  # the fallback: logits terms
    assert len(calls) == 1


def test_bad_operands_are_refused_in_one_line():
    lib = native.kernels()
    logits, targets = operands(8, 3)
    with pytest.raises(ValueError, match="logits must be a contiguous float32"):
        native.mix_cross_entropy(lib, logits.double(), targets, 10, 0.5, 1)
    with pytest.raises(ValueError, match="targets must be"):
        native.mix_cross_entropy(lib, logits, targets[:, :2].contiguous(), 10, 0.5, 1)
    with pytest.raises(ValueError, match=r"weights must lie in \(0, 1\]"):
        native.mix_cross_entropy(lib, logits.unsqueeze(1).contiguous(), targets.unsqueeze(1).contiguous(), 10, 0.5, 1,
                                 torch.full((8, 1), 2.0))
    with pytest.raises(ValueError, match="logits and targets must both have shape"):
        MF.mixed_cross_entropy(logits, targets.T, 10, 0.5)
