"""GPU backends at training sizes: 12x21x512x512 against the reference, determinism, and int64 indexing.

These need a CUDA device (benchmarks/gpu_suite.sh runs them); without one each test is skipped with the
reason printed.
"""
import pytest
import torch

import pottsops
from conftest import STATUS, random_image, random_mask, soft_labels
from test_potts_energy import energy_and_grad

GPU_BACKENDS = ["cuda", "triton"]


def require_gpu(backend):
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device: the {backend} backend at training sizes is checked by benchmarks/gpu_suite.sh")
    if not STATUS[backend].available:
        pytest.skip(f"{backend} backend: {STATUS[backend].reason}")


def training_batch(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = soft_labels(shape, torch.float64, "cuda", generator=g)
    image = random_image(shape, device="cuda", generator=g)
    mask = random_mask(shape, "cuda", generator=g)
    return y.to(dtype), image, mask


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("relaxation", pottsops.RELAXATIONS)
def test_potts_12x21x512x512(backend, dtype, relaxation):
    require_gpu(backend)
    shape = (12, 21, 512, 512)
    y, image, mask = training_batch(shape, dtype)
    neighborhood = "nn8" if pottsops.RELAXATIONS.index(relaxation) % 2 else "nn4"
    kwargs = dict(image=image, mask=mask, relaxation=relaxation, neighborhood=neighborhood)
    expected_energy, expected_grad = energy_and_grad(y.double(), "reference", **kwargs)
    energy, grad = energy_and_grad(y, backend, **kwargs)
    assert torch.isfinite(energy).all() and torch.isfinite(grad).all()
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(energy.double(), expected_energy, rtol=tol, atol=tol)
    scale = expected_grad.abs().max().item()
    torch.testing.assert_close(grad.double(), expected_grad, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_unaries_12x21x512x512(backend, dtype):
    require_gpu(backend)
    shape = (12, 21, 512, 512)
    y, _, mask = training_batch(shape, dtype, seed=1)
    logits = (torch.randn(shape, device="cuda") * 4).to(dtype)
    weights = torch.rand(12, 512, 512, device="cuda")
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    for kind in pottsops.UNARIES:
        results = []
        for impl, cast in ((backend, lambda t: t), ("reference", torch.Tensor.double)):
            z, labels = cast(logits).requires_grad_(), cast(y).requires_grad_()
            loss = pottsops.unary(z, labels, kind, mask=mask, reduction="none", backend=impl)
            results.append((loss.detach(), *torch.autograd.grad(loss, (z, labels), weights.to(loss))))
        for got, expected in zip(*results):
            assert torch.isfinite(got).all()
            scale = expected.abs().max().item()
            torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("neighborhood", ["nn8", pottsops.window(5)], ids=["nn8", "win5"])
def test_bitwise_deterministic(backend, neighborhood):
    require_gpu(backend)
    y, image, mask = training_batch((4, 21, 256, 256), torch.float32, seed=2)
    kwargs = dict(image=image, mask=mask, relaxation="nq", neighborhood=neighborhood)
    first = energy_and_grad(y, backend, **kwargs)
    second = energy_and_grad(y, backend, **kwargs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_int64_indexing_beyond_2_31_elements(backend):
    """A (1, 4, 23200, 23200) bf16 batch has 2.15e9 > 2^31 elements: the gradient in the last rows must
    match the reference on a crop (a pixel's gradient depends on its neighbours only)."""
    require_gpu(backend)
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2 ** 30:
        pytest.skip(f"needs 24 GiB of free GPU memory, {free / 2 ** 30:.1f} GiB free")
    side = 23200
    y = torch.full((1, 4, side, side), 0.25, dtype=torch.bfloat16, device="cuda")
    g = torch.Generator().manual_seed(3)
    crop = soft_labels((1, 4, 10, 12), torch.float64, "cuda", generator=g)
    y[..., -10:, -12:] = crop.to(torch.bfloat16)
    energy, grad = energy_and_grad(y, backend, relaxation="quadratic", neighborhood="nn8")
    assert torch.isfinite(energy).all()
    _, expected = energy_and_grad(y[..., -11:, -13:].double(), "reference", relaxation="quadratic",
                                  neighborhood="nn8")
    # Inside the crop (away from its top/left border) both see the same neighbours.
    torch.testing.assert_close(grad[..., -9:, -11:].double(), expected[..., -9:, -11:], rtol=1e-2, atol=1e-2)
    del y, grad
    torch.cuda.empty_cache()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_tensors_on_a_device_that_is_not_current(backend):
    """Every launch, the solver's CUDA graphs included, runs on the tensors' device, not the current one."""
    require_gpu(backend)
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs (one to be current, another to hold the tensors)")
    g = torch.Generator().manual_seed(4)
    logits, image = torch.randn(2, 4, 40, 44, generator=g), torch.rand(2, 3, 40, 44, generator=g) * 255
    seeds = torch.full((2, 40, 44), 255)
    seeds[:, 5, 5:30], seeds[:, 30, 10:40] = 0, 3
    expected = pottsops.solve(logits.double(), image.double(), seeds, backend="cpu", iters=60)
    torch.cuda.set_device(0)
    args = (logits.double().to("cuda:1"), image.double().to("cuda:1"), seeds.to("cuda:1"))
    y = pottsops.solve(*args, backend="cuda" if backend == "cuda" else "auto", iters=60)
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y.cpu(), expected, rtol=1e-5, atol=1e-5)
    energy = pottsops.potts_energy(torch.softmax(args[0], 1), args[1], backend=backend)
    assert energy.device == torch.device("cuda:1") and torch.isfinite(energy)


def test_a_cuda_graph_replays_the_pair_table_it_captured():
    """The CUDA grid kernels read their pair table from a device copy kept by a cache (grid_device.cuh): a graph
    captured after a warm-up replays it even after hundreds of other tables passed through the cache, and a
    capture that would need a table not yet on the device is refused with the fix."""
    require_gpu("cuda")
    g = torch.Generator().manual_seed(6)
    y = soft_labels((2, 5, 48, 40), torch.float32, "cuda", generator=g)
    image = random_image((2, 5, 48, 40), device="cuda", generator=g)
    kwargs = dict(neighborhood=pottsops.window(3), backend="cuda", reduction="none")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        pottsops.potts_energy(y, image, sigma_xy=2.5, **kwargs)  # the warm-up makes the table
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pottsops.potts_energy(y, image, sigma_xy=2.5, **kwargs)
    for i in range(300):  # past the cache's 256 tables: the ones no capture used are dropped
        pottsops.potts_energy(y, image, sigma_xy=3.0 + i / 100, **kwargs)
    graph.replay()
    expected = pottsops.potts_energy(y.double(), image.double(), sigma_xy=2.5, neighborhood=pottsops.window(3),
                                     backend="reference", reduction="none")
    torch.testing.assert_close(captured.double(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="offsets: this table .* is not on cuda:0 yet, and a CUDA graph is being "
                                           "captured"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            pottsops.potts_energy(y, image, sigma_xy=9.5, **kwargs)
