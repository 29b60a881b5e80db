"""Shared test helpers: which (backend, device) pairs run here, and random inputs of awkward shapes.

Without a GPU, Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1, set here before
anything imports triton).  POTTSOPS_LONG_SWEEP=N adds N random shapes to the sweeps.
"""
import contextlib
import os
import random
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pottsops  # noqa: E402  (after TRITON_INTERPRET)

STATUS = pottsops.backends()


def fast_backends():
    """(backend, device) pairs of the compiled/JIT backends that can run here."""
    pairs = []
    if STATUS["cpu"].available:
        pairs.append(("cpu", "cpu"))
    if STATUS["triton"].available:
        pairs.append(("triton", "cuda" if torch.cuda.is_available() else "cpu"))
    if STATUS["cuda"].available:
        pairs.append(("cuda", "cuda"))
    return pairs


def all_backends():
    return [("reference", "cpu")] + fast_backends()


def backend_id(pair):
    return f"{pair[0]}-{pair[1]}"


def interpreted(backend, device):
    """Triton on the CPU is interpreted: tests keep its shapes small."""
    return backend == "triton" and device == "cpu"


def shape_id(shape):
    return "B{}-K{}-H{}-W{}".format(*shape)


AWKWARD_SHAPES = [(1, 2, 1, 1), (1, 2, 1, 17), (3, 33, 5, 1), (3, 5, 7, 9), (1, 21, 16, 16), (2, 3, 13, 31)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def long_sweep_shapes(seed=0):
    count = int(os.environ.get("POTTSOPS_LONG_SWEEP", "0"))
    rng = random.Random(seed)
    return [(rng.randint(1, 4), rng.randint(2, 40), rng.randint(1, 70), rng.randint(1, 70)) for _ in range(count)]


def with_layout(t, layout):
    """The same values in another memory layout."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view into a larger buffer
        B, C, H, W = t.shape
        big = t.new_zeros(B, C + 1, H, 2 * W)
        big[:, 1:, :, ::2] = t
        return big[:, 1:, :, ::2]
    return t.contiguous()


def soft_labels(shape, dtype=torch.float32, device="cpu", sharpness=2.0, generator=None):
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * sharpness
    return torch.softmax(logits, 1).to(device=device, dtype=dtype)


def random_image(shape, channels=3, dtype=torch.float32, device="cpu", scale=30.0, generator=None):
    B, _, H, W = shape
    return (torch.rand(B, channels, H, W, generator=generator, dtype=torch.float64) * scale).to(device=device,
                                                                                              dtype=dtype)


def random_mask(shape, device="cpu", keep=0.8, generator=None):
    B, _, H, W = shape
    return (torch.rand(B, H, W, generator=generator) < keep).to(device)


@contextlib.contextmanager
def cpu_kernels(**kernels):
    """kernels[name] as the CPU kernel of the pottsops op `name` inside the block; the built-in one, if any,
    again after it."""
    lib = torch.library.Library("pottsops", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid")  # replacing a registered kernel warns
        for name, kernel in kernels.items():
            lib.impl(name, kernel, "CPU")
    try:
        yield
    finally:
        lib._destroy()


def adaptive_step_inputs(K, dtype=torch.float64, device="cpu"):
    """(theta, m, v, y, grad, steps, scale, seeds, seeded) and rule for one adaptive step: three images at
    steps 1, 7 and 30 with lr scales 1, 0.5 and 0 (stopped), seeds, moments from earlier steps, and a pixel at
    the floor."""
    g = torch.Generator().manual_seed(K)
    B, H, W = 3, 5, 7
    log_floor = -20.0
    theta = torch.log_softmax(torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 3, 1)
    theta[:, 1:, 0, 0] = log_floor  # a pixel at the floor: its other classes stay there
    theta[:, 0, 0, 0] = 0.0
    y = torch.softmax(theta, 1)
    m = torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 0.1
    v = torch.rand(B, K, H, W, generator=g, dtype=torch.float64) * 0.05
    grad = torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 4
    seeded = torch.rand(B, H, W, generator=g) < 0.2
    seeds = torch.randint(0, K, (B, H, W), generator=g)
    # on seeds: zero gradient and moments, theta 0 on the seed's class and log_floor elsewhere (the step's
    # precondition)
    grad, m, v = (torch.where(seeded[:, None], 0, t) for t in (grad, m, v))
    one_hot = torch.nn.functional.one_hot(seeds, K).permute(0, 3, 1, 2).bool()
    theta = torch.where(seeded[:, None], torch.where(one_hot, 0.0, log_floor), theta)
    y = torch.where(seeded[:, None], one_hot.double(), y)
    steps = torch.tensor([1, 7, 30])
    scale = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    tensors = [t.to(dtype).contiguous() for t in (theta, m, v, y, grad)] + [steps, scale, seeds, seeded]
    return [t.to(device) for t in tensors], [0.1, 0.9, 0.99, 1e-8, log_floor]
