"""Fused unaries and the self-labeling loss against the reference (docs/contract.md §5)."""
import pytest
import torch
import torch.nn.functional as F

import pottsops
from conftest import (AWKWARD_SHAPES, LAYOUTS, all_backends, backend_id, fast_backends, interpreted,
                      long_sweep_shapes, random_mask, shape_id, soft_labels, with_layout)


def loss_and_grads(logits, y, backend, kind, mask, weights):
    logits = logits.detach().requires_grad_()
    y = y.detach().requires_grad_()
    loss = pottsops.unary(logits, y, kind, mask=mask, reduction="none", backend=backend)
    grad_logits, grad_y = torch.autograd.grad(loss, (logits, y), weights.to(loss))
    return loss.detach(), grad_logits, grad_y


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("kind", pottsops.UNARIES)
def test_gradcheck_float64(pair, kind):
    backend, device = pair
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g).to(device).requires_grad_()
    y = soft_labels((2, 4, 3, 5), torch.float64, device, generator=g).requires_grad_()
    mask = random_mask((2, 4, 3, 5), device, generator=g)
    assert torch.autograd.gradcheck(
        lambda z, y: pottsops.unary(z, y, kind, mask=mask, reduction="none", backend=backend), (logits, y))


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES + long_sweep_shapes(1), ids=shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_awkward_shapes_against_reference(pair, layout, shape, dtype):
    backend, device = pair
    if interpreted(*pair) and shape[1] * shape[2] * shape[3] > 600:
        pytest.skip("interpreted Triton: shapes over 600 elements per image run on the GPU suite")
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(shape, generator=g) * 4).to(dtype)
    y = soft_labels(shape, generator=g).to(dtype)
    mask = random_mask(shape, generator=g)
    weights = torch.rand(shape[0], shape[2], shape[3], generator=g)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    for kind in pottsops.UNARIES:
        expected = loss_and_grads(logits.double(), y.double(), "reference", kind, mask, weights)
        got = loss_and_grads(with_layout(logits.to(device), layout), with_layout(y.to(device), layout), backend,
                             kind, mask.to(device), weights.to(device))
        for a, b in zip(got, expected):
            assert a.dtype == dtype
            scale = b.abs().max().item() + 1e-12
            torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
def test_values_by_hand(pair):
    backend, device = pair
    logits = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1).to(device)
    y = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64).view(1, 3, 1, 1).to(device)
    sigma = torch.softmax(logits.flatten(), 0)
    cce = pottsops.unary(logits, y, "cce", backend=backend, eps=0.0)
    ce = pottsops.unary(logits, y, "ce", backend=backend)
    rce = pottsops.unary(logits, y, "rce", backend=backend, eps=1e-3)
    assert float(cce) == pytest.approx(-torch.log(0.5 * sigma[0] + 0.5 * sigma[1]).item(), rel=1e-12)
    assert float(ce) == pytest.approx(-(0.5 * sigma[:2].log()).sum().item(), rel=1e-12)
    expected_rce = -(sigma * torch.log(y.flatten().cpu() + 1e-3)).sum().item()
    assert float(rce) == pytest.approx(expected_rce, rel=1e-12)


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("kind", pottsops.UNARIES)
def test_one_hot_and_extreme_logits_are_finite(pair, kind):
    backend, device = pair
    logits = torch.tensor([[80.0, -80.0, 0.0], [-80.0, 80.0, 0.0]]).T.reshape(1, 3, 1, 2).to(device).requires_grad_()
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2).to(device).requires_grad_()
    loss = pottsops.unary(logits, y, kind, backend=backend)
    grads = torch.autograd.grad(loss, (logits, y))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
def test_masked_pixel_changes_nothing(pair):
    backend, device = pair
    logits = torch.randn(1, 3, 2, 3, dtype=torch.float64, device=device)
    y = soft_labels((1, 3, 2, 3), torch.float64, device)
    mask = torch.ones(1, 2, 3, dtype=torch.bool, device=device)
    mask[0, 1, 2] = False
    base = loss_and_grads(logits, y, backend, "cce", mask, torch.ones(1, 2, 3))
    logits[0, :, 1, 2] = float("nan")
    y[0, :, 1, 2] = float("inf")
    changed = loss_and_grads(logits, y, backend, "cce", mask, torch.ones(1, 2, 3))
    for a, b in zip(base, changed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert changed[1][0, :, 1, 2].eq(0).all() and changed[2][0, :, 1, 2].eq(0).all()


def test_reductions_and_promotion():
    logits = torch.randn(2, 4, 3, 5)
    y = soft_labels((2, 4, 3, 5), torch.float64)
    mask = random_mask((2, 4, 3, 5))
    per_pixel = pottsops.unary(logits, y, mask=mask, reduction="none")
    assert per_pixel.shape == (2, 3, 5) and per_pixel.dtype == torch.float64
    torch.testing.assert_close(pottsops.unary(logits, y, mask=mask, reduction="sum"), per_pixel.sum())
    torch.testing.assert_close(pottsops.unary(logits, y, mask=mask), per_pixel.sum() / mask.sum())


@pytest.mark.parametrize("kind", pottsops.UNARIES)
def test_self_labeling_loss_is_eq8_without_potts(kind):
    g = torch.Generator().manual_seed(2)
    B, K, H, W = 2, 5, 6, 7
    logits = torch.randn(B, K, H, W, generator=g, dtype=torch.float64)
    y = soft_labels((B, K, H, W), torch.float64, generator=g)
    seeds = torch.randint(0, K, (B, H, W), generator=g)
    seeds[torch.rand(B, H, W, generator=g) < 0.7] = 255
    mask = random_mask((B, K, H, W), generator=g, keep=0.9)
    log_sigma = torch.log_softmax(logits, 1)
    seeded = (seeds != 255) & mask
    unlabeled = mask & (seeds == 255)
    seed_term = -log_sigma.gather(1, seeds.clamp(max=K - 1).unsqueeze(1))[:, 0][seeded].sum()
    unary_map = pottsops.unary(logits, y, kind, reduction="none", backend="reference")
    # the default: eq. 8's sums over their total weight, counted by hand
    loss = pottsops.self_labeling_loss(logits, y, seeds, eta=0.3, unary=kind, mask=mask)
    weight = int(seeded.sum()) + 0.3 * int(unlabeled.sum())
    torch.testing.assert_close(loss.double(), (seed_term + 0.3 * unary_map[unlabeled].sum()) / weight)
    loss = pottsops.self_labeling_loss(logits, y, seeds, eta=0.3, unary=kind, mask=mask, normalize="pixels")
    expected = (seed_term + 0.3 * unary_map[unlabeled].sum()) / mask.sum()
    torch.testing.assert_close(loss.double(), expected)
    terms = pottsops.self_labeling_loss(logits, y, seeds, eta=0.3, unary=kind, mask=mask, normalize="terms")
    expected = seed_term / seeded.sum() + 0.3 * unary_map[mask & (seeds == 255)].mean()
    torch.testing.assert_close(terms.double(), expected)
    # without a mask every pixel counts; the seeds term is ordinary cross-entropy
    loss = pottsops.self_labeling_loss(logits, y, seeds, eta=0.0, normalize="pixels")
    torch.testing.assert_close(loss.double(), F.cross_entropy(logits, seeds, ignore_index=255, reduction="sum")
                               / (B * H * W))
    # weighted at eta = 0 is partial cross-entropy, at eta = 1 the mean over every pixel
    torch.testing.assert_close(pottsops.self_labeling_loss(logits, y, seeds, eta=0.0, unary=kind).double(),
                               F.cross_entropy(logits, seeds, ignore_index=255))
    every_pixel = torch.where(seeds == 255, pottsops.unary(logits, y, kind, reduction="none", backend="reference"),
                              -log_sigma.gather(1, seeds.clamp(max=K - 1).unsqueeze(1))[:, 0])
    torch.testing.assert_close(pottsops.self_labeling_loss(logits, y, seeds, eta=1.0, unary=kind).double(),
                               every_pixel.mean())


def test_the_weighted_loss_keeps_the_step_size_of_partial_cross_entropy():
    """Why 'weighted' is the default: its logit gradient stays at pCE's size for every eta (the total weight
    divides it), where under 'pixels' it shrinks with eta and with the share of scribbled pixels.  Size: the
    L1 norm, which sums as the parameter gradient does (a mean over more pixels has a smaller L2 norm)."""
    g = torch.Generator().manual_seed(5)
    B, K, H, W = 2, 4, 32, 32
    logits = torch.randn(B, K, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    y = soft_labels((B, K, H, W), torch.float64, generator=g)
    seeds = torch.randint(0, K, (B, H, W), generator=g)
    seeds[torch.rand(B, H, W, generator=g) < 0.97] = 255   # 3 % scribbled, as on ACDC
    pce_grad, = torch.autograd.grad(F.cross_entropy(logits, seeds, ignore_index=255), logits)
    for eta in (0.03, 0.1, 0.3, 1.0):
        ratios = {}
        for normalize in ("weighted", "pixels"):
            loss = pottsops.self_labeling_loss(logits, y, seeds, eta=eta, unary="ce", normalize=normalize)
            grad, = torch.autograd.grad(loss, logits)
            ratios[normalize] = float(grad.abs().sum() / pce_grad.abs().sum())
        assert 0.5 < ratios["weighted"] < 2, (eta, ratios)
        if eta < 1:  # at eta = 1 the two divide by the same count
            assert ratios["pixels"] < 0.5 * ratios["weighted"], (eta, ratios)


def test_the_weighted_loss_with_nothing_to_weigh_is_zero():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    y = torch.full((1, 3, 4, 4), 1 / 3)
    no_seeds = torch.full((1, 4, 4), 255)
    for kwargs in (dict(eta=0.0), dict(eta=0.3, mask=torch.zeros(1, 4, 4, dtype=torch.bool))):
        loss = pottsops.self_labeling_loss(logits, y, no_seeds, **kwargs)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(logits.grad).all()
