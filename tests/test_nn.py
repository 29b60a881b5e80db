"""pottsops.nn: each module against the functional API and against the published loss's formula written out
plainly here (float64), gradients, autocast, torch.compile(fullgraph=True), state_dict / repr, and errors."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import pottsops
from pottsops.nn import DenseCRFLoss, GatedCRFLoss, PottsLoss, SoftSelfLabelingLoss


def _smooth(b, c, h, w, scale, seed):
    """Smooth random fields (what images and predictions look like), so the lattice is near its accuracy
    on real images."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, max(2, h // 4), max(2, w // 4), generator=g, dtype=torch.float64)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * scale


def _probs(b, k, h, w, seed):
    return torch.softmax(_smooth(b, k, h, w, 6.0, seed), 1)


def _rloss_formula(images, segmentations, rois, weight, sigma_rgb, sigma_xy):
    """rloss's loss at scale 1, exactly: weight * -sum_k S_k^T W S_k / B, W over all pairs incl. i = j."""
    B, K, H, W = segmentations.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    xy = torch.stack([ys.flatten(), xs.flatten()], 1)
    total = 0.0
    for b in range(B):
        f = images[b].flatten(1).T
        affinity = torch.exp(-torch.cdist(xy, xy) ** 2 / (2 * sigma_xy ** 2) - torch.cdist(f, f) ** 2 / (2 * sigma_rgb ** 2))
        s = (segmentations[b] * rois[b]).flatten(1).T
        total = total - (s * (affinity @ s)).sum()
    return weight * total / B


def _gated_formula(y, image, kernels_desc, radius, mask=None):
    """The Gated CRF loss with its Potts shortcut, pair by pair: sum_i sum_{j in window(i) inside the image,
    j != i} k_ij (1 - y_i . y_j) / (B H W, or the mask's count), masked pairs dropped."""
    B, K, H, W = y.shape
    valid = torch.ones(B, H, W, dtype=torch.bool) if mask is None else mask
    total = 0.0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx == 0:
                continue
            rows_i = slice(max(0, -dy), H - max(0, dy))
            cols_i = slice(max(0, -dx), W - max(0, dx))
            rows_j = slice(max(0, dy), H - max(0, -dy))
            cols_j = slice(max(0, dx), W - max(0, -dx))
            kernel = 0.0
            for desc in kernels_desc:
                exponent = -(dy * dy + dx * dx) / (2 * desc["xy"] ** 2)
                if "rgb" in desc:
                    diff = image[:, :, rows_i, cols_i] - image[:, :, rows_j, cols_j]
                    exponent = exponent - (diff ** 2).sum(1) / (2 * desc["rgb"] ** 2)
                kernel = kernel + desc.get("weight", 1.0) * torch.exp(torch.as_tensor(exponent, dtype=torch.float64))
            same = (y[:, :, rows_i, cols_i] * y[:, :, rows_j, cols_j]).sum(1)
            pair = valid[:, rows_i, cols_i] & valid[:, rows_j, cols_j]
            total = total + (kernel * (1 - same) * pair).sum()
    return total / (valid.sum() if mask is not None else B * H * W)


def test_potts_loss_is_the_functional_energy():
    y, image = _probs(2, 4, 9, 11, 0).float(), _smooth(2, 3, 9, 11, 255, 1).float()
    mask = torch.ones(2, 9, 11, dtype=torch.bool)
    mask[1, :, :3] = False
    loss = PottsLoss(relaxation="q", neighborhood="nn8", sigma_rgb=12.0, weight=0.5)
    expected = 0.5 * pottsops.potts_energy(y, image, relaxation="q", neighborhood="nn8", sigma_rgb=12.0,
                                           mask=mask, reduction="mean")
    torch.testing.assert_close(loss(y, image, mask), expected)
    assert loss.state_dict() == {} and "relaxation='q'" in repr(loss)


def test_dense_crf_loss_matches_rloss_formula_and_its_gradient():
    """Scale 1 against the exact all-pairs formula (the lattice approximates it), and scale 0.5 against the
    same formula on the inputs resized as rloss resizes them."""
    images, rois = _smooth(2, 3, 24, 20, 255, 2), torch.ones(2, 24, 20, dtype=torch.float64)
    rois[0, :4] = 0
    segmentations = _probs(2, 3, 24, 20, 3).requires_grad_()
    module = DenseCRFLoss(weight=1e-3, sigma_rgb=40.0, sigma_xy=6.0, scale_factor=1.0)
    value = module(images, segmentations, rois)
    value.backward()
    value = value.detach()
    exact_s = segmentations.detach().clone().requires_grad_()
    exact = _rloss_formula(images, exact_s, rois, 1e-3, 40.0, 6.0)
    exact.backward()
    exact = exact.detach()
    assert float(value) == pytest.approx(float(exact), rel=0.2)   # the lattice's error: 11 % here
    cosine = F.cosine_similarity(segmentations.grad.flatten(), exact_s.grad.flatten(), dim=0)
    assert float(cosine) > 0.99 and float(segmentations.grad.norm() / exact_s.grad.norm()) == pytest.approx(1, rel=0.15)

    half = DenseCRFLoss(weight=1e-3, sigma_rgb=40.0, sigma_xy=12.0, scale_factor=0.5)
    scaled = _rloss_formula(F.interpolate(images, scale_factor=0.5),
                            F.interpolate(segmentations.detach(), scale_factor=0.5, mode="bilinear", align_corners=False),
                            F.interpolate(rois[:, None], scale_factor=0.5)[:, 0], 1e-3, 40.0, 6.0)
    assert float(half(images, segmentations.detach(), rois)) == pytest.approx(float(scaled), rel=0.2)


def test_dense_crf_loss_gradcheck_float64():
    images = _smooth(1, 3, 6, 5, 255, 4)
    rois = torch.ones(1, 6, 5, dtype=torch.float64)
    segmentations = _probs(1, 2, 6, 5, 5).requires_grad_()
    module = DenseCRFLoss(weight=0.1, sigma_rgb=50.0, sigma_xy=3.0, scale_factor=1.0)
    # the module works in float32 as rloss does; check the float64 filter it is built on
    filtered = lambda s: -(s * pottsops.bilateral_filter(s, images, 3.0, 50.0)).sum()  # noqa: E731
    assert torch.autograd.gradcheck(filtered, (segmentations,))
    assert torch.isfinite(module(images, segmentations, rois))


@pytest.mark.parametrize("with_mask", [False, True])
def test_gated_crf_loss_matches_the_published_formula(with_mask):
    y = _probs(2, 3, 10, 12, 6).requires_grad_()
    image = _smooth(2, 3, 10, 12, 1.0, 7)
    desc = [{"weight": 0.9, "xy": 3.0, "rgb": 0.1}, {"weight": 0.1, "xy": 3.0}]
    mask = None
    if with_mask:
        mask = torch.ones(2, 10, 12, dtype=torch.bool)
        mask[0, 2:5, 3:7] = False
    value = GatedCRFLoss(desc, 2)(y, image, mask)
    grad, = torch.autograd.grad(value, y)
    expected_y = y.detach().clone().requires_grad_()
    expected = _gated_formula(expected_y, image, desc, 2, mask)
    expected_grad, = torch.autograd.grad(expected, expected_y)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)


def test_soft_self_labeling_loss_is_solve_then_eq8():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 12, 10, generator=g, requires_grad=True)
    image = _smooth(2, 3, 12, 10, 255, 9).float()
    seeds = torch.full((2, 12, 10), 255)
    seeds[:, 2, 2:6], seeds[:, 9, 3:8] = 0, 2
    module = SoftSelfLabelingLoss(eta=0.3, lam=2.0, relaxation="q", neighborhood="nn8", iters=40)
    loss, y = module(logits, image, seeds, return_labels=True)
    expected_y = pottsops.solve(logits.detach(), image, seeds, relaxation="q", neighborhood="nn8", eta=0.3, lam=2.0,
                                iters=40)
    torch.testing.assert_close(y, expected_y)
    torch.testing.assert_close(loss, pottsops.self_labeling_loss(logits, expected_y, seeds, eta=0.3))
    assert not y.requires_grad
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert "relaxation='q'" in repr(module) and "iters=40" in repr(module) and module.state_dict() == {}


def test_modules_under_bf16_autocast_are_finite_and_close():
    y, image = _probs(2, 4, 16, 16, 10).float(), _smooth(2, 3, 16, 16, 255, 11).float()
    logits = torch.log(y)
    for module, args in ((PottsLoss(), (y, image)), (GatedCRFLoss([{"weight": 1.0, "xy": 2.0, "rgb": 20.0}], 2), (y, image)),
                         (DenseCRFLoss(1e-4, 15.0, 20.0, 0.5), (image, y, torch.ones(2, 16, 16)))):
        full = module(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = module(*(a.bfloat16() if a is y else a for a in args))
        assert low.dtype == torch.float32 and math.isfinite(float(low))
        assert float(low) == pytest.approx(float(full), rel=0.05), type(module).__name__
    seeds = torch.full((2, 16, 16), 255)
    seeds[:, 3, 3] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(SoftSelfLabelingLoss(iters=10)(logits.bfloat16(), image, seeds))


def test_modules_compile_fullgraph():
    y, image = _probs(2, 3, 12, 12, 12).float().requires_grad_(), _smooth(2, 3, 12, 12, 255, 13).float()
    rois = torch.ones(2, 12, 12)
    for module, args in ((PottsLoss(relaxation="cd", neighborhood="nn4"), (y, image)),
                         (GatedCRFLoss([{"weight": 1.0, "xy": 2.0, "rgb": 20.0}], 1), (y, image)),
                         (DenseCRFLoss(1e-3, 15.0, 20.0, 1.0), (image, y, rois))):
        eager = module(*args)
        grad_eager, = torch.autograd.grad(eager, y)
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")(*args)
        grad_compiled, = torch.autograd.grad(compiled, y)
        torch.testing.assert_close(compiled, eager)
        torch.testing.assert_close(grad_compiled, grad_eager)


def test_soft_self_labeling_under_compile_solves_eagerly():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    image, seeds = torch.rand(2, 3, 8, 8) * 255, torch.full((2, 8, 8), 255)
    seeds[:, 1, 1] = 0
    module = SoftSelfLabelingLoss(iters=10)
    torch.testing.assert_close(torch.compile(module, backend="aot_eager")(logits, image, seeds),
                               module(logits, image, seeds))


@pytest.mark.parametrize("make, message", [
    (lambda: PottsLoss(weight=float("nan")), "weight"),
    (lambda: PottsLoss(reduction="avg"), "reduction"),
    (lambda: DenseCRFLoss(1e-9, 0.0, 80.0, 0.5), "sigma_rgb"),
    (lambda: DenseCRFLoss(1e-9, 15.0, 80.0, -1), "scale_factor"),
    (lambda: GatedCRFLoss([], 5), "kernels_desc"),
    (lambda: GatedCRFLoss([{"weight": 1, "sigma": 3}], 5), r"kernels_desc\[0\]"),
    (lambda: GatedCRFLoss([{"xy": 3}], 0), "radius"),
    (lambda: SoftSelfLabelingLoss(eta=float("inf")), "eta"),
    (lambda: SoftSelfLabelingLoss(normalize="sum"), "normalize"),
])
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_forward_arguments_are_named():
    y = _probs(1, 3, 6, 6, 14).float()
    with pytest.raises(ValueError, match="ROIs"):
        DenseCRFLoss(1e-9, 15.0, 80.0, 1.0)(torch.rand(1, 3, 6, 6), y, torch.ones(1, 5, 6))
    with pytest.raises(ValueError, match="image"):
        GatedCRFLoss([{"xy": 2.0, "rgb": 0.1}], 1)(y)
    with pytest.raises(ValueError, match="images"):
        DenseCRFLoss(1e-9, 15.0, 80.0, 1.0)(torch.rand(1, 3, 5, 6), y, torch.ones(1, 6, 6))
    with pytest.raises(ValueError, match="scale_factor"):
        DenseCRFLoss(1e-9, 15.0, 80.0, 0.1)(torch.rand(1, 3, 6, 6), y, torch.ones(1, 6, 6))


def test_readme_quick_start_runs():
    """The README's quick start, as written, on a one-layer model and a random batch."""
    import os
    import re
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", readme, re.S).group(1)
    g = torch.Generator().manual_seed(15)
    images = torch.rand(2, 3, 16, 20, generator=g) * 255
    scribbles = torch.full((2, 16, 20), 255)
    scribbles[:, 3, 2:9], scribbles[:, 12, 5:15] = 0, 2
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    namespace = {"model": lambda x: conv(x / 255), "images": images, "scribbles": scribbles}
    exec(compile(code, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and torch.isfinite(namespace["e"])
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    # its Gated CRF kernel on its own 0..255 images weighs something (rgb 0.1 there gave exactly 0.0)
    probs = torch.softmax(conv(images / 255).detach(), 1)
    weight = namespace["gated_crf"].kernels_desc[0]["weight"]
    assert float(namespace["gated_crf"](probs, images)) > 1e-3 * weight


def test_potts_and_gated_losses_gradcheck_float64():
    y = _probs(1, 3, 5, 6, 16).requires_grad_()
    image = _smooth(1, 3, 5, 6, 1.0, 17)
    gated = GatedCRFLoss([{"weight": 0.7, "xy": 2.0, "rgb": 0.3}, {"weight": 0.3, "xy": 2.0}], 2)
    assert torch.autograd.gradcheck(lambda t: gated(t, image), (y,))
    assert torch.autograd.gradcheck(lambda t: PottsLoss("cd", "nn8", sigma_rgb=0.5)(t, image), (y,))


@pytest.mark.parametrize("shape", [(0, 3, 8, 9), (2, 3, 0, 9), (2, 3, 8, 0)], ids=["B0", "H0", "W0"])
def test_empty_batches_and_images_give_zero_losses(shape):
    """A reduction over no pixels is 0 (docs/contract.md §8): the modules that divide by the batch or by the
    pixel count gave 0/0 = NaN on an empty batch."""
    y = torch.softmax(torch.randn(shape), 1).requires_grad_()
    image = torch.rand(shape[0], 3, *shape[2:]) * 255
    losses = [pottsops.nn.GatedCRFLoss([{"weight": 1.0, "xy": 6.0, "rgb": 15.0}], 2)(y, image),
              pottsops.nn.PottsLoss()(y, image)]
    if shape[0] == 0:  # the lattice needs pixels in an image; an empty batch is all it can see as empty
        losses.append(pottsops.nn.DenseCRFLoss(1e-9, 15.0, 80.0, 1.0)(image, y, torch.ones(shape[0], *shape[2:])))
    for loss in losses:
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert torch.isfinite(y.grad).all()


def test_a_first_hour_slip_is_an_error_naming_the_argument():
    """Issue 31: logits where PottsLoss wants probabilities (cd and cce would give NaN) and a torchvision
    model's dict output are refused by name."""
    g = torch.Generator().manual_seed(2)
    logits, image = torch.randn(2, 3, 8, 9, generator=g) * 4, torch.rand(2, 3, 8, 9, generator=g) * 255
    for relaxation in ("cd", "cce", "q"):
        with pytest.raises(ValueError, match=r"probs: expected probabilities in \[0, 1\]"):
            pottsops.nn.PottsLoss(relaxation)(logits, image)
    assert torch.isfinite(pottsops.nn.PottsLoss("cd")(torch.softmax(logits, 1), image))
    # issue 39: DenseCRFLoss took raw logits silently (value -3.3e-6); every Potts module refuses them now
    with pytest.raises(ValueError, match=r"segmentations: expected probabilities in \[0, 1\]"):
        pottsops.nn.DenseCRFLoss(2e-9, 15.0, 100.0, 0.5)(image, logits, torch.ones(2, 8, 9))
    with pytest.raises(ValueError, match=r"y_hat_softmax: expected probabilities in \[0, 1\]"):
        pottsops.nn.GatedCRFLoss([{"weight": 1.0, "xy": 6.0, "rgb": 15.0}], 2)(logits, image)
    seeds = torch.full((2, 8, 9), 255)
    seeds[:, 0, 0] = 1
    with pytest.raises(TypeError, match=r"logits: expected a torch.Tensor, got dict.*model\(x\)\['out'\]"):
        pottsops.nn.SoftSelfLabelingLoss()({"out": logits}, image, seeds)


def test_modules_compile_with_dynamic_shapes():
    """torch.compile(fullgraph=True, dynamic=True) of PottsLoss and DenseCRFLoss (issue 30 item 9: the
    argument checks used math.isfinite, which cannot be traced on the symbolic floats dynamic=True makes),
    at two sizes, against the eager values."""
    g = torch.Generator().manual_seed(6)
    potts = PottsLoss("cd", "nn4", backend="reference")
    dense = DenseCRFLoss(1e-3, 15.0, 20.0, 1.0)
    compiled_potts = torch.compile(potts, fullgraph=True, dynamic=True)
    compiled_dense = torch.compile(dense, fullgraph=True, dynamic=True)
    for H in (8, 11):
        y, image = torch.softmax(torch.randn(2, 3, H, 9, generator=g), 1), torch.rand(2, 3, H, 9, generator=g) * 255
        rois = torch.ones(2, H, 9)
        torch.testing.assert_close(compiled_potts(y, image), potts(y, image), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(compiled_dense(image, y, rois), dense(image, y, rois), rtol=1e-5, atol=1e-7)


_SCALE_SCRIPT = r"""
import warnings, torch, pottsops
y = torch.softmax(torch.randn(1, 3, 8, 9), 1)
image = torch.rand(1, 3, 8, 9)
def caught(call):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in seen if "sigma_rgb" in str(w.message)]
assert caught(lambda: pottsops.potts_energy(y, image * 255)) == []                      # 0..255: nothing
assert caught(lambda: pottsops.potts_energy(y, image, sigma_rgb=0.1)) == []              # 0..1 in its units
first = caught(lambda: pottsops.potts_energy(y, image))                                  # 0..1, sigma 9
assert len(first) == 1 and "lies in [0, 1]" in first[0], first
assert caught(lambda: pottsops.potts_energy(y, image)) == []                             # once per function, kind
# another function, or another kind, warns again (issue 39: one warning per process hid them)
later = caught(lambda: pottsops.solve(torch.randn(1, 3, 8, 9), image - 0.5, torch.full((1, 8, 9), 255), iters=2))
assert len(later) == 1 and "pottsops.solve: image has negative values" in later[0], later
module = caught(lambda: pottsops.nn.PottsLoss()(y, image))
assert len(module) == 1 and "pottsops.PottsLoss: image lies in [0, 1]" in module[0], module
assert caught(lambda: pottsops.nn.PottsLoss()(y, image)) == []
print("ok")
"""


def test_an_image_in_other_units_than_sigma_rgb_warns_once():
    """Issue 31: a 0..1 image (or a normalised one) against sigma_rgb in colour units gives every weight about
    1 without an error; the first calls of a process look at its range and warn once per function or module
    and kind of image (issue 39: once per process hid a later module's problem), in a fresh process."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", _SCALE_SCRIPT], capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
    negative = _SCALE_SCRIPT.split("first = ")[0] + (
        "first = caught(lambda: pottsops.affinity(image - 0.5))\n"
        "assert len(first) == 1 and 'pottsops.affinity: image has negative values' in first[0], first\n"
        "assert caught(lambda: pottsops.affinity(image - 0.5)) == []\n"
        "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", negative], capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr


def test_a_uint8_image_is_refused_with_the_fix():
    y = torch.softmax(torch.randn(1, 3, 4, 5), 1)
    with pytest.raises(TypeError, match=r"image: .*torch.uint8; pass image.float\(\)"):
        pottsops.potts_energy(y, torch.zeros(1, 3, 4, 5, dtype=torch.uint8))


def test_a_gated_kernel_that_weighs_nothing_warns():
    """Issue 31: 'rgb': 0.1 beside 0..255 colours makes every weight underflow to 0 and the loss exactly 0."""
    y = torch.softmax(torch.randn(1, 3, 16, 16), 1)
    image = torch.rand(1, 3, 16, 16) * 255
    loss = GatedCRFLoss([{"weight": 1.0, "xy": 6.0, "rgb": 0.1}], 5)
    with pytest.warns(UserWarning, match="weighs every pixel pair 0"):
        assert float(loss(y, image)) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(y, image)  # once per module
        assert float(GatedCRFLoss([{"weight": 1.0, "xy": 6.0, "rgb": 15.0}], 5)(y, image)) > 0


def test_the_reference_bilateral_filter_of_an_empty_image_is_empty():
    for shape in ((1, 2, 0, 5), (1, 2, 4, 0), (0, 2, 4, 5)):
        out = pottsops.bilateral_filter(torch.rand(shape), torch.rand(shape) * 255, sigma_xy=5.0, sigma_rgb=10.0,
                                        backend="reference")
        assert out.shape == shape


def test_the_published_gated_crf_call_is_refused_with_the_mapping():
    y = torch.softmax(torch.randn(1, 3, 8, 8), 1)
    kernels = [{"weight": 1.0, "xy": 6.0, "rgb": 15.0}]
    with pytest.raises(TypeError, match=r"GatedCRFLoss\(kernels_desc, kernels_radius\)\(y_hat_softmax, image, mask\)"):
        GatedCRFLoss(kernels, 2)(y, kernels, 2, {"rgb": torch.rand(1, 3, 8, 8)}, 8, 8)
    with pytest.raises(ValueError, match=r"kernels_desc\[0\].*concatenate them into the image"):
        GatedCRFLoss([{"weight": 1.0, "xy": 6.0, "image": 0.1}], 2)
