"""The registered operators: torch.library.opcheck (schema, fake kernels, autograd registration,
AOT dispatch) and torch.compile(fullgraph=True) through the public API."""
import pytest
import torch

import pottsops
from pottsops import _extension, lattice
from pottsops.neighborhoods import NN8
from conftest import backend_id, fast_backends, interpreted, random_image, random_mask, soft_labels

pytestmark = pytest.mark.skipif(not _extension.ensure("cpu"), reason=f"pottsops' C++ kernels are not built: "
                                f"{_extension.describe('cpu')}")



def op_namespace(pair):
    """The operators of a backend: torch.ops.pottsops (C++/CUDA) or torch.ops.pottsops_triton."""
    backend, device = pair
    if interpreted(backend, device):
        pytest.skip("opcheck's fake-tensor pass cannot run interpreted Triton kernels; runs in the GPU suite")
    if backend == "triton":
        import pottsops.triton.grid_potts  # noqa: F401  (registers the pottsops_triton ops)
        import pottsops.triton.unary  # noqa: F401
        return torch.ops.pottsops_triton
    return torch.ops.pottsops


def grid_args(device, dtype, with_image, requires_grad):
    shape = (2, 3, 5, 6)
    y = soft_labels(shape, dtype, device).requires_grad_(requires_grad)
    image = random_image(shape, device=device) if with_image else None
    weights = None if with_image else torch.rand(2, 4, 5, 6, dtype=dtype, device=device).requires_grad_(requires_grad)
    inv = torch.full((2,), 0.01, device=device) if with_image else None
    mask = random_mask(shape, device)
    return (y, image, weights, mask, inv, NN8.flat_offsets(), NN8.spatial(), 5, 1e-8)


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
@pytest.mark.parametrize("with_image", [True, False], ids=["image", "weights"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_grid_ops(pair, with_image, dtype):
    ops, device = op_namespace(pair), pair[1]
    for requires_grad in (False, True):
        args = grid_args(device, dtype, with_image, requires_grad)
        torch.library.opcheck(ops.grid_potts_energy.default, args)
        grad = torch.rand(2, dtype=dtype, device=device)
        y, image, weights, mask, inv = args[:5]
        backward_args = (grad, y.detach(), image, None if weights is None else weights.detach(), mask, inv,
                         *args[5:], not with_image)
        torch.library.opcheck(ops.grid_potts_energy_backward.default, backward_args)
    image = random_image((2, 3, 5, 6), device=device, dtype=dtype)
    torch.library.opcheck(ops.grid_affinity.default,
                          (image, None, torch.full((2,), 0.01, device=device), NN8.flat_offsets(), NN8.spatial()))


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_opcheck_unary_ops(pair, kind):
    ops, device = op_namespace(pair), pair[1]
    shape = (2, 4, 3, 5)
    for requires_grad in (False, True):
        logits = torch.randn(shape, device=device).requires_grad_(requires_grad)
        y = soft_labels(shape, device=device).requires_grad_(requires_grad)
        mask = random_mask(shape, device)
        torch.library.opcheck(ops.unary_loss.default, (logits, y, mask, kind, 1e-8))
        grad = torch.rand(2, 3, 5, device=device)
        torch.library.opcheck(ops.unary_loss_backward.default,
                              (grad, logits.detach(), y.detach(), mask, kind, 1e-8))


@pytest.mark.parametrize("pair", fast_backends(), ids=backend_id)
def test_compile_fullgraph(pair):
    backend, device = pair
    if interpreted(backend, device):
        pytest.skip("torch.compile cannot trace interpreted Triton kernels on CPU tensors; runs in the GPU suite")
    torch._dynamo.reset()
    shape = (2, 5, 9, 10)
    logits = torch.randn(shape, device=device, requires_grad=True)
    y = soft_labels(shape, device=device)
    image = random_image(shape, device=device)
    mask = random_mask(shape, device)

    def loss_fn(logits, y, image, mask):
        sigma = torch.softmax(logits, 1)
        potts = pottsops.potts_energy(sigma, image, relaxation="nq", neighborhood="nn8", mask=mask, reduction="mean",
                                      backend=backend)
        return pottsops.unary(logits, y, "cce", mask=mask, backend=backend) + 0.5 * potts

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    expected = loss_fn(logits, y, image, mask)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    got = compiled(logits, y, image, mask)
    (got_grad,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)


@pytest.mark.parametrize("pair", [p for p in fast_backends() if p[0] in lattice.FILTER_BACKENDS], ids=backend_id)
def test_opcheck_lattice(pair):
    device = pair[1]
    values = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=device)
    features = torch.randn(2, 5, 5, 6, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.pottsops.lattice_build.default, (features,))
    lattice = torch.ops.pottsops.lattice_build(features)
    for op in (torch.ops.pottsops.lattice_filter.default, torch.ops.pottsops.lattice_quadratic.default):
        torch.library.opcheck(op, (values, lattice))
        torch.library.opcheck(op, (values.clone().requires_grad_(), lattice))