"""The CUDA grid, unary and solver kernels' device code run on the host (tests/csrc/device_emulation.cpp,
built here) against the reference ops, in float64 and in float32 (the types the CUDA launchers use).  CI
has no GPU: this is where it tests the code each CUDA thread runs (csrc/cuda/grid_device.cuh,
unary_device.cuh, the step rule's adaptive_pixel in pottsops/solver_math.h), in the kernels' launch shape.  Each test puts the emulated kernels in place of the CPU kernels of the pottsops
ops of the same names, then goes through the public API; what it cannot check (nvcc's code, cub's
reduction order) is left to benchmarks/gpu_suite.sh on a GPU.  The lattice's CUDA kernels are not emulated:
their per-thread code is the CPU lattice's (lattice.h's simplex search, tested through lattice_simplex in
test_dense.py) and a three-line segment sum, and the rest of the CUDA lattice is PyTorch code that
test_dense.py runs on CPU tensors."""
import hashlib
import os
import sys

import pytest
import torch

import pottsops
from pottsops import _build_settings, _extension
from conftest import adaptive_step_inputs, cpu_kernels, random_image, random_mask, soft_labels
from pottsops.neighborhoods import as_neighborhood

from pottsops.solver import problem as solver_problem  # noqa: E402

EMULATED = ("grid_potts_energy", "grid_potts_energy_backward", "grid_affinity", "unary_loss", "unary_loss_backward",
            "grid_solver_gradient", "adaptive_step")
NEIGHBORHOODS = ["nn4", "nn8", pottsops.window(2), pottsops.window(1, dilation=2)]
NB_IDS = ["nn4", "nn8", "win2", "win1d2"]

EMULATION_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "device_emulation.cpp")


def build_emulation():
    """Builds (once per sources, flags and torch, into the build cache) and loads the emulation's library of
    pottsops_emulated::* kernels; returns None, or why it could not."""
    if not _extension.ensure("cpu"):
        return f"the C++ kernels are not loaded: {_extension.describe('cpu')}"
    reason = _extension.why_not_buildable("cpu")
    if reason:
        return reason
    from torch.utils import cpp_extension
    digest = hashlib.sha256()
    for part in (open(EMULATION_SOURCE, "rb").read(), _build_settings.sources_digest().encode(),
                 " ".join(_build_settings.cxx_flags()).encode(), torch.__version__.encode(),
                 sys.implementation.cache_tag.encode()):
        digest.update(part)
    key = digest.hexdigest()[:20]
    folder = os.path.join(_extension.cache_dir(), f"tests-emulation-{key}")
    os.makedirs(folder, exist_ok=True)
    print(f"building the test-only device emulation into {folder} (cached)", file=sys.stderr)
    cpp_extension.load(name=f"pottsops_emulation_{key}", build_directory=folder, is_python_module=False,
                       sources=[EMULATION_SOURCE, _build_settings.host_checks_source()],
                       extra_cflags=_build_settings.cxx_flags(), extra_ldflags=_build_settings.link_flags(),
                       extra_include_paths=[_build_settings.CSRC], verbose=False)
    return None


_WHY_NOT = build_emulation()
if _WHY_NOT:
    pytest.skip(f"the device emulation was not built: {_WHY_NOT}", allow_module_level=True)

# The emulated ops take the schemas of the pottsops ops they stand in for.
_SCHEMAS = torch.library.Library("pottsops_emulated", "DEF")
for _name in EMULATED:
    _SCHEMAS.define(str(getattr(torch.ops.pottsops, _name).default._schema).split("::", 1)[1])


def emulated(*names):
    """The emulated device code as the CPU kernels of the pottsops ops `names` inside a with-block."""
    return cpu_kernels(**{name: getattr(torch.ops.pottsops_emulated, name).default for name in names})


def energy_and_grads(y, backend, weights=None, **kwargs):
    """Energies (B,) and the gradients of sum_b c_b energy_b with respect to y (and weights)."""
    inputs = [y.detach().requires_grad_()] + ([] if weights is None else [weights.detach().requires_grad_()])
    energy = pottsops.potts_energy(inputs[0], weights=None if weights is None else inputs[1], backend=backend,
                                   reduction="none", **kwargs)
    grads = torch.autograd.grad(energy, inputs, torch.linspace(0.5, 1.5, energy.numel(), dtype=energy.dtype))
    return (energy.detach(), *grads)


def test_the_emulation_is_what_runs():
    """Inside emulated() the pottsops op runs the emulation (float32 and float64), and the CPU kernel after it."""
    y = soft_labels((1, 3, 4, 5)).half()
    with emulated("grid_potts_energy"):
        with pytest.raises(RuntimeError, match="y: the emulated device code runs float32 and float64, got Half"):
            pottsops.potts_energy(y, backend="cpu")
    assert torch.isfinite(pottsops.potts_energy(y, backend="cpu"))


def test_the_grid_kernels_parameters_fit_in_4_kb():
    """The largest grid launch's parameters (grid_device.cuh kLargestGridKernelParameters) within the 4 KB
    that every CUDA version takes: the pair table is read from device memory.  Taken by value, the table of
    512 offsets in double made it 6.4 KB, which needs CUDA 12.1 and a driver for it."""
    assert torch.ops.pottsops_table_cache.largest_grid_kernel_parameters() <= 4096


def test_the_table_cache_keeps_tables_a_graph_captured_and_drops_the_others():
    """grid_device.cuh's tables go through pottsops/table_cache.h: one copy per table and device, made
    outside a capture; a capture gets the copy made before it, and keeps it for good; past the capacity the
    copies no capture used are dropped."""
    cache = torch.ops.pottsops_table_cache
    cache.reset(3)
    table = lambda i: torch.arange(i, i + 24, dtype=torch.uint8)  # noqa: E731
    first = cache.get(table(0), False)
    assert torch.equal(first, table(0)) and cache.size() == 1
    assert cache.get(table(0), False).data_ptr() == first.data_ptr()  # one copy per table
    with pytest.raises(RuntimeError, match="table: this table \\(24 bytes\\) is not on cpu yet, and a CUDA graph is "
                                           "being captured.*run the same call once before capturing"):
        cache.get(table(1), True)
    assert cache.get(table(0), True).data_ptr() == first.data_ptr()  # a capture uses the copy made before it
    assert cache.get(torch.empty(0, dtype=torch.uint8), True).numel() == 0  # no pairs: nothing to copy
    second, third = cache.get(table(1), False), cache.get(table(2), False)
    assert cache.size() == 3
    fourth = cache.get(table(3), False)  # full: drops the tables no capture used
    assert cache.size() == 2 and torch.equal(fourth, table(3))
    assert cache.get(table(0), False).data_ptr() == first.data_ptr()  # the captured one stayed
    assert torch.equal(second, table(1)) and torch.equal(third, table(2))  # a caller's dropped copy stays valid
    assert cache.get(table(1), False).data_ptr() != second.data_ptr()  # made again
    assert cache.size() == 3


@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS, ids=NB_IDS)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_energy_and_gradients_match_the_reference(relaxation, neighborhood):
    """energy_pixel and backward_pixel (grid_potts.cu's kernels) against autograd through the reference:
    with image weights and a mask, and with given weights (their gradient too), an image of 315 pixels
    (two blocks, the second partly filled) in a strided layout."""
    g = torch.Generator().manual_seed(21)
    shape = (2, 5, 7, 45)
    y = soft_labels(shape, torch.float64, generator=g).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    image = random_image(shape, dtype=torch.float64, generator=g)
    mask = random_mask(shape, generator=g)
    weights = torch.rand(2, as_neighborhood(neighborhood).num_offsets, 7, 45, dtype=torch.float64, generator=g)
    for kwargs in (dict(image=image, mask=mask), dict(weights=weights)):
        expected = energy_and_grads(y, "reference", relaxation=relaxation, neighborhood=neighborhood, **kwargs)
        with emulated("grid_potts_energy", "grid_potts_energy_backward"):
            got = energy_and_grads(y, "cpu", relaxation=relaxation, neighborhood=neighborhood, **kwargs)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_each_call_reads_its_own_table():
    """The tables come from a cache keyed by their bytes (4 tables in the emulation): calls that differ only
    in sigma_xy (the spatial factors), in dtype or in offsets each read their own, past the cache's capacity
    and back, against the reference."""
    g = torch.Generator().manual_seed(23)
    shape = (1, 3, 6, 7)
    for dtype, neighborhood, sigma_xy in [(torch.float64, pottsops.window(2), s) for s in (0.5, 1.0, 2.0, 4.0, 8.0)] + [
            (torch.float32, pottsops.window(2), 1.0), (torch.float64, pottsops.window(1, dilation=2), 1.0),
            (torch.float64, pottsops.window(2), 0.5)]:
        y = soft_labels(shape, dtype, generator=g)
        kwargs = dict(image=random_image(shape, dtype=dtype, generator=g), neighborhood=neighborhood, sigma_xy=sigma_xy)
        expected = pottsops.potts_energy(y, backend="reference", reduction="none", **kwargs)
        with emulated("grid_potts_energy"):
            got = pottsops.potts_energy(y, backend="cpu", reduction="none", **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("K", [2, 4, 5, 16, 17, 33, 64, 70])
def test_classes_in_register_chunks(K):
    """K below, at and above each register width (4, 16, 32, 64: dispatch_kmax); K = 70 takes two chunks."""
    g = torch.Generator().manual_seed(K)
    shape = (1, K, 6, 9)
    y = soft_labels(shape, torch.float64, generator=g)
    kwargs = dict(image=random_image(shape, dtype=torch.float64, generator=g), relaxation="cd", neighborhood="nn8")
    expected = energy_and_grads(y, "reference", **kwargs)
    with emulated("grid_potts_energy", "grid_potts_energy_backward"):
        got = energy_and_grads(y, "cpu", **kwargs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS, ids=NB_IDS)
def test_affinity_matches_the_reference(neighborhood):
    g = torch.Generator().manual_seed(22)
    shape = (2, 1, 6, 50)
    image = random_image(shape, dtype=torch.float64, generator=g)
    mask = random_mask(shape, generator=g)
    expected = pottsops.affinity(image, neighborhood, sigma_rgb=7.0, mask=mask, backend="reference")
    with emulated("grid_affinity"):
        got = pottsops.affinity(image, neighborhood, sigma_rgb=7.0, mask=mask, backend="cpu")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", pottsops.UNARIES)
def test_unary_matches_the_reference(kind):
    """unary_forward_pixel and unary_backward_pixel against autograd through the reference: a strided y,
    sharp and one-hot labels, large logits, and masked pixels holding NaN here (which must not leak: the
    results equal the reference's on clean input, zero on those pixels)."""
    g = torch.Generator().manual_seed(23)
    shape = (2, 6, 9, 31)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 6
    logits[0, :, 0, 0] = torch.tensor([80.0, -80.0, 0.0, 3.0, -3.0, 1.0], dtype=torch.float64)
    y = soft_labels(shape, torch.float64, sharpness=4.0, generator=g)
    y[1, :, 2, 3] = torch.nn.functional.one_hot(torch.tensor(4), 6).double()
    mask = random_mask(shape, generator=g)
    y = y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels_last
    weights = torch.rand(2, 9, 31, generator=g, dtype=torch.float64)

    def run(backend, z):
        inputs = [z.clone().requires_grad_(), y.clone().requires_grad_()]
        loss = pottsops.unary(*inputs, kind, mask=mask, reduction="none", backend=backend)
        return (loss.detach(), *torch.autograd.grad(loss, inputs, weights))

    expected = run("reference", logits)
    with emulated("unary_loss", "unary_loss_backward"):
        got = run("cpu", logits.masked_fill(~mask.unsqueeze(1), float("nan")))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def solve_problem(backend, relaxation="cd", unary="cce", neighborhood="nn4", K=4, B=2, H=14, W=23, seed=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 2
    image = torch.rand(B, 3, H, W, generator=g, dtype=torch.float64) * 255
    seeds = torch.full((B, H, W), 255)
    seeds[:, 2:4, 2:12] = 1
    seeds[:, 9:11, 4:15] = K - 1
    seeds[-1, 6, 1:5] = 0
    mask = random_mask((B, K, H, W), keep=0.85, generator=g)
    return solver_problem.make_problem(
        logits=logits, image=image, seeds=seeds, relaxation=relaxation, unary=unary, neighborhood=neighborhood,
        eta=0.3, lam=6.0, sigma_rgb=9.0, sigma_xy=None, mask=mask, weights=None, ignore_index=255,
        dense_method="lattice", backend=backend)


@pytest.mark.parametrize("unary", pottsops.UNARIES)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_solver_gradient_matches_the_reference(relaxation, unary):
    """solver_gradient_pixel over stored labels (grid_solver_gradient's CUDA kernel) against autograd
    through the reference ops: energy and gradient (zero on seeds and masked pixels), with a window
    neighbourhood, a mask and a strided y."""
    fused = solve_problem("cpu", relaxation, unary, pottsops.window(2, 1))
    reference = solve_problem("reference", relaxation, unary, pottsops.window(2, 1))
    y = torch.softmax(torch.randn(2, 23, 14, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), 3)
    y = reference.clamp(y.permute(0, 3, 2, 1))
    with emulated("grid_solver_gradient"):
        got = fused.gradient(y)
    for a, b in zip(got, reference.gradient(y)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("K", [2, 5, 70])
def test_adaptive_step_matches_the_reference(K):
    """adaptive_pixel (adaptive_step's CUDA kernel) against reference.adaptive_step: three images at
    different step numbers, one of them stopped, seeds and a pixel whose pseudo-logits sit at the floor."""
    inputs, rule = adaptive_step_inputs(K)
    expected = [t.clone() for t in inputs]
    pottsops.reference.adaptive_step(*expected, rule)
    with emulated("adaptive_step"):
        torch.ops.pottsops.adaptive_step(*inputs, rule)
    for got, want in zip(inputs[:4], expected[:4]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# float32: the device code in the types the CUDA launchers use for float32 tensors (acc_t = float), against the
# float64 reference of the same (float32) inputs.  Tolerances: float32's epsilon (1.2e-7) times the terms summed.
F32 = dict(rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("neighborhood", ["nn4", pottsops.window(2)], ids=["nn4", "win2"])
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_float32_energy_and_gradients(relaxation, neighborhood):
    g = torch.Generator().manual_seed(31)
    shape = (2, 5, 7, 45)
    y = soft_labels(shape, torch.float32, generator=g)
    image = random_image(shape, dtype=torch.float32, generator=g)
    mask = random_mask(shape, generator=g)
    expected = energy_and_grads(y.double(), "reference", relaxation=relaxation, neighborhood=neighborhood,
                                image=image.double(), mask=mask)
    with emulated("grid_potts_energy", "grid_potts_energy_backward"):
        got = energy_and_grads(y, "cpu", relaxation=relaxation, neighborhood=neighborhood, image=image, mask=mask)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, **F32)


def test_float32_affinity():
    g = torch.Generator().manual_seed(32)
    image = random_image((2, 3, 6, 50), dtype=torch.float32, generator=g)
    expected = pottsops.affinity(image.double(), "nn8", sigma_rgb=7.0, backend="reference")
    with emulated("grid_affinity"):
        got = pottsops.affinity(image, "nn8", sigma_rgb=7.0, backend="cpu")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", pottsops.UNARIES)
def test_float32_unary(kind):
    g = torch.Generator().manual_seed(33)
    shape = (2, 6, 9, 31)
    logits = torch.randn(shape, generator=g) * 6
    logits[0, :, 0, 0] = torch.tensor([80.0, -80.0, 0.0, 3.0, -3.0, 1.0])
    y = soft_labels(shape, torch.float32, sharpness=4.0, generator=g)
    weights = torch.rand(2, 9, 31, generator=g)

    def run(backend, z, t):
        inputs = [z.clone().requires_grad_(), t.clone().requires_grad_()]
        loss = pottsops.unary(*inputs, kind, reduction="none", backend=backend)
        return (loss.detach(), *torch.autograd.grad(loss, inputs, weights.to(z.dtype)))

    expected = run("reference", logits.double(), y.double())
    with emulated("unary_loss", "unary_loss_backward"):
        got = run("cpu", logits, y)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, **F32)


@pytest.mark.parametrize("relaxation, unary", [("cd", "cce"), ("q", "ce"), ("nq", "rce"), ("bl", "cce")])
def test_float32_solver_gradient(relaxation, unary):
    fused = solver_problem.make_problem(**solve_inputs(torch.float32), relaxation=relaxation, unary=unary,
                                        neighborhood=pottsops.window(2, 1), backend="cpu")
    reference = solver_problem.make_problem(**solve_inputs(torch.float64), relaxation=relaxation, unary=unary,
                                            neighborhood=pottsops.window(2, 1), backend="reference")
    y = torch.softmax(torch.randn(2, 23, 14, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), 3)
    y = reference.clamp(y.permute(0, 3, 2, 1).float().double())
    with emulated("grid_solver_gradient"):
        got = fused.gradient(y.float())
    for a, b in zip(got, reference.gradient(y)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=2e-4, atol=2e-3)


def solve_inputs(dtype, K=4, B=2, H=14, W=23, seed=8):
    """solve_problem's inputs, rounded to float32 first, in dtype."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 2).float().to(dtype)
    image = (torch.rand(B, 3, H, W, generator=g, dtype=torch.float64) * 255).float().to(dtype)
    seeds = torch.full((B, H, W), 255)
    seeds[:, 2:4, 2:12] = 1
    seeds[:, 9:11, 4:15] = K - 1
    mask = random_mask((B, K, H, W), keep=0.85, generator=g)
    return dict(logits=logits, image=image, seeds=seeds, eta=0.3, lam=6.0, sigma_rgb=9.0, sigma_xy=None,
                mask=mask, weights=None, ignore_index=255, dense_method="lattice")


@pytest.mark.parametrize("K", [2, 5, 70])
def test_float32_adaptive_step(K):
    inputs, rule = adaptive_step_inputs(K, dtype=torch.float32)
    expected = [t.double() if t.dtype == torch.float32 else t.clone() for t in inputs]
    pottsops.reference.adaptive_step(*expected, rule)
    with emulated("adaptive_step"):
        torch.ops.pottsops.adaptive_step(*inputs, rule)
    for got, want in zip(inputs[:4], expected[:4]):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
