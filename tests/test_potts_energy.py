"""potts_energy and affinity of every fast backend against the reference (docs/contract.md §3-4)."""
import pytest
import torch

import pottsops
from pottsops.neighborhoods import as_neighborhood
from pottsops.reference import accumulation_dtype
from conftest import (AWKWARD_SHAPES, LAYOUTS, all_backends, backend_id, fast_backends, interpreted,
                      long_sweep_shapes, random_mask, shape_id, soft_labels, random_image, with_layout)

NEIGHBORHOODS = ["nn4", "nn8", pottsops.window(2), pottsops.window(1, dilation=2)]
NB_IDS = ["nn4", "nn8", "win2", "win1d2"]


def energy_and_grad(y, backend, **kwargs):
    y = y.detach().requires_grad_()
    energy = pottsops.potts_energy(y, backend=backend, reduction="none", **kwargs)
    (grad,) = torch.autograd.grad(energy, y, torch.linspace(0.5, 1.5, energy.numel(), dtype=energy.dtype,
                                                             device=energy.device))
    return energy.detach(), grad


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS, ids=NB_IDS)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_gradcheck_float64(pair, neighborhood, relaxation):
    backend, device = pair
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 4, 5)
    y = soft_labels(shape, torch.float64, device, generator=g).requires_grad_()
    image = random_image(shape, dtype=torch.float64, device=device, generator=g)
    mask = random_mask(shape, device, generator=g)
    E = as_neighborhood(neighborhood).num_offsets
    weights = torch.rand(2, E, 4, 5, dtype=torch.float64, generator=g).to(device).requires_grad_()

    def with_image(y):
        return pottsops.potts_energy(y, image, relaxation=relaxation, neighborhood=neighborhood, mask=mask,
                                     backend=backend, reduction="none")

    def with_weights(y, weights):
        return pottsops.potts_energy(y, weights=weights, relaxation=relaxation, neighborhood=neighborhood,
                                     backend=backend, reduction="none")

    fast_mode = interpreted(backend, device)  # one random direction: the full Jacobian takes minutes interpreted
    assert torch.autograd.gradcheck(with_image, (y,), fast_mode=fast_mode)
    assert torch.autograd.gradcheck(with_weights, (y, weights), fast_mode=fast_mode)


def compare_with_reference(backend, device, shape, layout, relaxation, neighborhood, masked, dtype=torch.float32,
                           seed=0):
    g = torch.Generator().manual_seed(seed)
    y = soft_labels(shape, torch.float64, generator=g)
    image = random_image(shape, generator=g)
    mask = random_mask(shape, generator=g) if masked else None
    expected_energy, expected_grad = energy_and_grad(y.to(dtype).double(), "reference", image=image, mask=mask,
                                                     relaxation=relaxation, neighborhood=neighborhood)
    y_fast = with_layout(y.to(device=device, dtype=dtype), layout)
    energy, grad = energy_and_grad(y_fast, backend, image=image.to(device), relaxation=relaxation,
                                   neighborhood=neighborhood, mask=None if mask is None else mask.to(device))
    assert energy.dtype == accumulation_dtype(dtype) and grad.dtype == dtype and grad.shape == y.shape
    tol = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    scale = expected_grad.abs().max().item() + 1e-12
    torch.testing.assert_close(energy.double().cpu(), expected_energy, rtol=tol, atol=tol)
    torch.testing.assert_close(grad.double().cpu(), expected_grad, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", AWKWARD_SHAPES + long_sweep_shapes(), ids=shape_id)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_fp32_awkward_shapes(pair, layout, shape, masked):
    backend, device = pair
    if interpreted(*pair) and shape[1] * shape[2] * shape[3] > 600:
        pytest.skip("interpreted Triton: shapes over 600 elements per image run on the GPU suite")
    for i, relaxation in enumerate(pottsops.RELAXATIONS):
        neighborhood = NEIGHBORHOODS[i % len(NEIGHBORHOODS)]
        compare_with_reference(backend, device, shape, layout, relaxation, neighborhood, masked, seed=i)


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_reduced_precision_input(pair, dtype, relaxation):
    backend, device = pair
    compare_with_reference(backend, device, (2, 7, 9, 11), "channels_last", relaxation, "nn8", True, dtype=dtype)


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_masked_pixel_changes_nothing(pair, relaxation):
    backend, device = pair
    g = torch.Generator().manual_seed(3)
    shape = (1, 4, 6, 7)
    y = soft_labels(shape, torch.float64, device, generator=g)
    image = random_image(shape, dtype=torch.float64, device=device, generator=g)
    mask = torch.ones(1, 6, 7, dtype=torch.bool, device=device)
    mask[0, 2, 3] = False
    results = []
    for value in (0.25, 1e6, float("nan")):
        changed = y.clone()
        changed[0, :, 2, 3] = value
        image_changed = image.clone()
        image_changed[0, :, 2, 3] = value
        energy, grad = energy_and_grad(changed, backend, image=image_changed, mask=mask, relaxation=relaxation,
                                       neighborhood="nn8")
        assert grad[0, :, 2, 3].eq(0).all()
        results.append((energy, grad))
    for energy, grad in results[1:]:
        torch.testing.assert_close(energy, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=0)


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS, ids=NB_IDS)
def test_affinity_matches_energy_with_image(pair, neighborhood):
    backend, device = pair
    g = torch.Generator().manual_seed(4)
    shape = (2, 5, 6, 7)
    y = soft_labels(shape, torch.float64, device, generator=g)
    image = random_image(shape, dtype=torch.float64, device=device, generator=g)
    mask = random_mask(shape, device, generator=g)
    weights = pottsops.affinity(image, neighborhood, sigma_rgb=7.0, mask=mask, backend=backend)
    expected = pottsops.affinity(image.cpu(), neighborhood, sigma_rgb=7.0, mask=mask.cpu(), backend="reference")
    torch.testing.assert_close(weights.cpu(), expected)
    from_weights = pottsops.potts_energy(y, weights=weights, neighborhood=neighborhood, mask=mask, backend=backend)
    from_image = pottsops.potts_energy(y, image, sigma_rgb=7.0, neighborhood=neighborhood, mask=mask, backend=backend)
    torch.testing.assert_close(from_weights, from_image)


def test_affinity_values_by_hand():
    image = torch.tensor([[[[0.0, 3.0], [4.0, 4.0]]]], dtype=torch.float64)  # (1, 1, 2, 2)
    w = pottsops.affinity(image, "nn8", sigma_rgb=2.0)
    g = lambda d2: torch.exp(torch.tensor(-d2 / 8.0, dtype=torch.float64))  # noqa: E731
    assert w.shape == (1, 4, 2, 2)
    torch.testing.assert_close(w[0, 0, 0, 0], g(9.0))       # (0,0)-(0,1)
    torch.testing.assert_close(w[0, 1, 0, 1], g(1.0))       # (0,1)-(1,1)
    torch.testing.assert_close(w[0, 2, 0, 0], g(16.0) / 2 ** 0.5)  # diagonal (0,0)-(1,1)
    torch.testing.assert_close(w[0, 3, 0, 1], g(1.0) / 2 ** 0.5)   # anti-diagonal (0,1)-(1,0)
    assert w[0, 0, :, 1].eq(0).all() and w[0, 1, 1].eq(0).all()  # pairs leaving the image


def test_energy_by_hand_counts_each_pair_once():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # two different one-hot pixels
    assert float(pottsops.potts_energy(y, relaxation="bilinear")) == 1.0
    assert float(pottsops.potts_energy(y, relaxation="bilinear", neighborhood="nn8")) == 1.0
    y4 = torch.ones(1, 2, 2, 2) * 0.5  # 2x2 image: 4 nn4 pairs + 2 diagonals of factor 1/sqrt(2)
    assert float(pottsops.potts_energy(y4, relaxation="bl")) == pytest.approx(4 * 0.5)
    assert float(pottsops.potts_energy(y4, relaxation="bl", neighborhood="nn8")) == pytest.approx(
        (4 + 2 / 2 ** 0.5) * 0.5)


def test_sigma_rgb_auto():
    g = torch.Generator().manual_seed(5)
    image = random_image((2, 1, 5, 6), generator=g, dtype=torch.float64)
    image[1] *= 3  # a higher-contrast image gets a proportionally wider bandwidth
    w_auto = pottsops.affinity(image, sigma_rgb="auto")
    diff_h = image[:, :, :, 1:] - image[:, :, :, :-1]
    diff_v = image[:, :, 1:] - image[:, :, :-1]
    mean_sq = torch.cat([(diff_h ** 2).sum(1).flatten(1), (diff_v ** 2).sum(1).flatten(1)], 1).mean(1)
    for b in range(2):
        expected = pottsops.affinity(image[b:b + 1], sigma_rgb=float(mean_sq[b].sqrt()))
        torch.testing.assert_close(w_auto[b:b + 1], expected)
    constant = torch.full((1, 3, 4, 4), 7.0)
    w_const = pottsops.affinity(constant, sigma_rgb="auto")
    assert torch.isfinite(w_const).all() and w_const[0, 0, :, :3].eq(1).all()


@pytest.mark.parametrize("pair", all_backends(), ids=backend_id)
def test_reductions(pair):
    backend, device = pair
    shape = (3, 4, 5, 6)
    y = soft_labels(shape, device=device)
    mask = random_mask(shape, device)
    per_image = pottsops.potts_energy(y, mask=mask, reduction="none", backend=backend)
    assert per_image.shape == (3,)
    torch.testing.assert_close(pottsops.potts_energy(y, mask=mask, backend=backend), per_image.sum())
    torch.testing.assert_close(pottsops.potts_energy(y, mask=mask, reduction="mean", backend=backend),
                               per_image.sum() / mask.sum())


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
def test_deterministic(pair):
    backend, device = pair
    shape = (2, 6, 17, 19)
    y = soft_labels(shape, device=device)
    image = random_image(shape, device=device)
    first = energy_and_grad(y, backend, image=image, neighborhood="nn8")
    for _ in range(2):
        again = energy_and_grad(y, backend, image=image, neighborhood="nn8")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
def test_weights_in_other_dtype_and_layout(pair):
    backend, device = pair
    shape = (2, 4, 7, 8)
    y = soft_labels(shape, device=device, dtype=torch.float64)
    weights = torch.rand(2, 2, 7, 8, dtype=torch.float32).to(device)
    weights = weights.contiguous(memory_format=torch.channels_last).requires_grad_()
    energy = pottsops.potts_energy(y, weights=weights, backend=backend)
    (grad,) = torch.autograd.grad(energy, weights)
    w_ref = weights.detach().cpu().double().requires_grad_()
    expected = pottsops.potts_energy(y.cpu(), weights=w_ref, backend="reference")
    (grad_ref,) = torch.autograd.grad(expected, w_ref)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(energy.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.cpu().double(), grad_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
@pytest.mark.parametrize("neighborhood", ["nn8", pottsops.window(2)], ids=["nn8", "win2"])
def test_bitwise_deterministic(pair, neighborhood):
    backend, device = pair
    g = torch.Generator().manual_seed(5)
    shape = (2, 5, 9, 11)
    y = soft_labels(shape, generator=g).to(device)
    kwargs = dict(image=random_image(shape, generator=g).to(device), mask=random_mask(shape, generator=g).to(device),
                  relaxation="nq", neighborhood=neighborhood)
    first, second = energy_and_grad(y, backend, **kwargs), energy_and_grad(y, backend, **kwargs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
