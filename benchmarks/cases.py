"""The registry of benchmark cases: each op at each configuration, with its float64 reference and its
byte floor.  Backends: names accepted by pottsops ('cpu', 'cuda', 'triton', 'reference') plus
'compile(reference)', torch.compile of the reference measured in the same run."""

import torch
import torch.nn.functional as F

import pottsops
from benchmarks.baselines import (gated_style_window_loss, per_class_dense_crf_loss, reference_solver,
                                 shift_subtract_nn4_loss, unfold_window_potts)
from benchmarks.data import dense_inputs, smooth_image, soft_labels
from benchmarks.harness import Case


ELEMENT = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8}


def _potts_call(backend, relaxation, neighborhood):
    if backend == "unfold":
        return lambda y, image: unfold_window_potts(y, image, neighborhood)

    def energy(y, image):
        return pottsops.potts_energy(y, image, relaxation=relaxation, neighborhood=neighborhood,
                                     backend="reference" if backend == "compile(reference)" else backend)
    return energy


_potts_fns = {}


def potts_function(backend, relaxation, neighborhood):
    key = (backend, relaxation, str(neighborhood))
    if key not in _potts_fns:
        fn = _potts_call(backend, relaxation, neighborhood)
        _potts_fns[key] = torch.compile(fn) if backend == "compile(reference)" else fn
    return _potts_fns[key]


def forward_backward(fn, direction, tensors, wrt):
    """fn(*tensors) and, for fwd+bwd, the gradients of its sum to tensors[:wrt]."""
    leaves = [t.detach().requires_grad_(direction == "fwd+bwd" and i < wrt) for i, t in enumerate(tensors)]
    out = fn(*leaves)
    if direction == "fwd":
        return (out.detach(),)
    return (out.detach(), *torch.autograd.grad(out.sum(), leaves[:wrt]))


def potts_case(relaxation, neighborhood, shape, dtype, direction, backends):
    B, K, H, W = shape

    def make_inputs(device, seed):
        g = torch.Generator().manual_seed(seed)
        return {"y": soft_labels(shape, dtype, device, g), "image": smooth_image(B, H, W, device, g)}

    def run(backend, inputs):
        fn = potts_function(backend, relaxation, neighborhood)
        return forward_backward(lambda y: fn(y, inputs["image"]), direction, [inputs["y"]], 1)

    def expected(inputs):
        fn = potts_function("reference", relaxation, neighborhood)
        return forward_backward(lambda y: fn(y, inputs["image"]), direction, [inputs["y"].double()], 1)

    y_bytes = B * K * H * W * ELEMENT[dtype]
    image_bytes = B * 3 * H * W * 4
    floor = y_bytes + image_bytes + (y_bytes if direction == "fwd+bwd" else 0)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    return Case("potts_energy", f"{relaxation}/{neighborhood}", shape, dtype, direction, make_inputs, run,
                expected, floor, backends, tolerance)


_unary_fns = {}


def unary_function(backend, kind):
    key = (backend, kind)
    if key not in _unary_fns:
        def fn(logits, y):
            return pottsops.unary(logits, y, kind, reduction="sum",
                                  backend="reference" if backend == "compile(reference)" else backend)
        _unary_fns[key] = torch.compile(fn) if backend == "compile(reference)" else fn
    return _unary_fns[key]


def unary_case(kind, shape, dtype, direction, backends):
    def make_inputs(device, seed):
        g = torch.Generator().manual_seed(seed)
        logits = (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)
        return {"logits": logits, "y": soft_labels(shape, dtype, device, g)}

    def run(backend, inputs):
        return forward_backward(unary_function(backend, kind), direction, [inputs["logits"], inputs["y"]], 2)

    def expected(inputs):
        fn = unary_function("reference", kind)
        return forward_backward(fn, direction, [inputs["logits"].double(), inputs["y"].double()], 2)

    tensor_bytes = shape[0] * shape[1] * shape[2] * shape[3] * ELEMENT[dtype]
    floor = 2 * tensor_bytes + (2 * tensor_bytes if direction == "fwd+bwd" else 0)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    return Case("unary", kind, shape, dtype, direction, make_inputs, run, expected, floor, backends, tolerance)


def bilateral_case(shape, sigma_xy, sigma_rgb, backends):
    """bilateral_filter of K soft-label channels plus ones (B, K + 1, H, W) over an RGB image, the Potts
    lattice's workload.  Backends: 'cuda', 'cpu' (the C++ lattice, on CPU copies of the inputs) and
    'per-class(cpu)': one single-channel CPU filtering per image and class, as the DenseCRF loss does.
    The oracle is the C++ lattice in float64 (itself checked against the exact sum in tests/test_dense.py):
    the exact sum is O(N^2)."""
    B, K, H, W = shape

    def make_inputs(device, seed):
        g = torch.Generator().manual_seed(seed)
        values = torch.cat([soft_labels(shape, torch.float32, "cpu", g), torch.ones(B, 1, H, W)], 1)
        image = smooth_image(B, H, W, "cpu", g)
        return {"values": values.to(device), "image": image.to(device), "values_cpu": values, "image_cpu": image}

    def run(backend, inputs):
        if backend == "per-class(cpu)":
            return (torch.cat([torch.cat([pottsops.bilateral_filter(inputs["values_cpu"][b:b + 1, k:k + 1],
                                                                    inputs["image_cpu"][b:b + 1], sigma_xy,
                                                                    sigma_rgb, backend="cpu")
                                          for k in range(K + 1)], 1) for b in range(B)]),)
        on_cpu = backend == "cpu"
        values, image = (inputs["values_cpu"], inputs["image_cpu"]) if on_cpu else (inputs["values"], inputs["image"])
        return (pottsops.bilateral_filter(values, image, sigma_xy, sigma_rgb, backend=backend),)

    def expected(inputs):
        return (pottsops.bilateral_filter(inputs["values_cpu"].double(), inputs["image_cpu"].double(), sigma_xy,
                                          sigma_rgb, backend="cpu"),)

    floor = 2 * B * (K + 1) * H * W * 4 + B * 3 * H * W * 4  # values in, result out, the image
    return Case("bilateral_filter", f"lattice sxy={sigma_xy:g} srgb={sigma_rgb:g}", (B, K + 1, H, W), torch.float32,
                "fwd", make_inputs, run, expected, floor, backends, 1e-4, slow=("cpu", "per-class(cpu)"))


def dense_exact_case(relaxation, shape, direction, backends, sigma_xy=10.0, sigma_rgb=15.0):
    """Exact dense Potts (all pairs) at the network's output resolution.  FLOP floor per ordered pair:
    the label and feature products (2K + 2d), the weight and the relaxation (~20), doubled for the
    backward's products; bytes are negligible next to it."""
    B, K, H, W = shape
    N = H * W

    def make_inputs(device, seed):
        g = torch.Generator().manual_seed(seed)
        return {"y": soft_labels(shape, torch.float32, device, g), "image": smooth_image(B, H, W, device, g)}

    def energy(backend):
        def fn(y, image):
            return pottsops.potts_energy(y, image, relaxation=relaxation, neighborhood="dense", method="exact",
                                         sigma_xy=sigma_xy, sigma_rgb=sigma_rgb, backend=backend)
        return fn

    def run(backend, inputs):
        return forward_backward(lambda y: energy(backend)(y, inputs["image"]), direction, [inputs["y"]], 1)

    def expected(inputs):
        return forward_backward(lambda y: energy("reference")(y, inputs["image"]), direction,
                                [inputs["y"].double()], 1)

    per_pair = 2 * K + 2 * 5 + 20 + (2 * K + 2 * 5 + 20 if direction == "fwd+bwd" else 0)
    floor_bytes = B * K * N * 4 * (2 if direction == "fwd+bwd" else 1)
    return Case("potts_energy", f"{relaxation}/dense-exact", shape, torch.float32, direction, make_inputs, run,
                expected, floor_bytes, backends, 1e-4, floor_flops=B * N * N * per_pair, slow=("reference",))


def solver_case(shape, backends, iters=50):
    """pottsops.solve (the fused step, full resolution only) against the reference solver (Adam on pseudo-
    logits through autograd) and its torch.compile'd energy: nn4, cd + cce, iters steps.  The check: y on the
    simplex, seeds one-hot, energy at most that of the initialisation (the solvers differ, so no output is
    compared with another's).  Floor: per step, read the rule's state (pseudo-logits and two moments) and
    sigma, the image, and write the state (the labels and the gradient need not reach memory)."""
    B, K, H, W = shape

    def make_inputs(device, seed):
        g = torch.Generator().manual_seed(seed)
        logits = (torch.randn(shape, generator=g) * 2).to(device)
        seeds = torch.full((B, H, W), 255, dtype=torch.long)
        for b in range(B):
            for k in range(K):
                row = int(torch.randint(0, H - 3, (1,), generator=g))
                col = int(torch.randint(0, W // 2, (1,), generator=g))
                seeds[b, row:row + 3, col:col + W // 3] = k
        return {"logits": logits, "image": smooth_image(B, H, W, device, g), "seeds": seeds.to(device)}

    def run(backend, inputs):
        if backend in ("reference", "compile(reference)"):
            return (reference_solver(inputs["logits"], inputs["image"], inputs["seeds"], iters,
                                     compiled=backend == "compile(reference)"),)
        return (pottsops.solve(inputs["logits"], inputs["image"], inputs["seeds"], iters=iters, tol=0.0, levels=0,
                               backend=backend),)

    def energy(y, inputs):
        seeded = inputs["seeds"] != 255
        unary = pottsops.unary(inputs["logits"], y, "cce", mask=~seeded, reduction="sum", backend="reference")
        return float(0.3 * unary + 6.0 * pottsops.potts_energy(y, inputs["image"], relaxation="cd",
                                                               backend="reference"))

    def check(outputs, inputs):
        (y,) = outputs
        seeded = inputs["seeds"] != 255
        start = torch.softmax(inputs["logits"], 1)
        start = torch.where(seeded[:, None], F.one_hot(inputs["seeds"].clamp(max=K - 1), K).permute(0, 3, 1, 2)
                            .float(), start)
        simplex = float((y.sum(1) - 1).abs().max())
        seeds_ok = bool((y.argmax(1)[seeded] == inputs["seeds"][seeded]).all())
        rise = max(0.0, energy(y, inputs) - energy(start, inputs)) / abs(energy(start, inputs))
        return simplex + (0.0 if seeds_ok else 1.0) + rise if torch.isfinite(y).all() else float("inf")

    floor = iters * B * H * W * (7 * K + 3) * 4
    return Case("solve", f"cd+cce/nn4 x{iters}", shape, torch.float32, "solve", make_inputs, run, None, floor,
                backends, 1e-4, slow=("reference", "compile(reference)"), slow_reps=3, check=check,
                throughput=("mpix_iterations_per_s", B * H * W * iters / 1e6))


# Anchors: pottsops.nn modules against the eager formulations users write today (cpu-anchors suite).


def anchor_case(kind, shape):
    """kind 'window' (GatedCRFLoss vs the unfold loss, radius 5), 'nn4' (PottsLoss(q, nn4) vs the
    shift-and-subtract loss) or 'dense' (DenseCRFLoss vs the per-class loop, sigma_xy 100, sigma_rgb 15):
    loss and gradient to the labels, forward + backward, B, K, H, W = shape."""
    from pottsops import nn
    B, K, H, W = shape
    ours = {"window": nn.GatedCRFLoss([{"weight": 1.0, "xy": 5.0, "rgb": 9.0}], 5),
            "nn4": nn.PottsLoss("quadratic", "nn4", sigma_rgb=9.0, weight=2.0, reduction="mean", backend="cpu"),
            "dense": nn.DenseCRFLoss(1.0, 15.0, 100.0, 1.0)}[kind]
    baseline = {"window": ("unfold", lambda y, image: gated_style_window_loss(y, image, 5, 9.0)),
                "nn4": ("eager", lambda y, image: shift_subtract_nn4_loss(y, image, 9.0)),
                "dense": ("per-class(cpu)", lambda y, image: per_class_dense_crf_loss(image, y, 15.0, 100.0))}[kind]
    ones = torch.ones(B, H, W)
    module = (lambda y, image: ours(image, y, ones)) if kind == "dense" else ours

    def make_inputs(device, seed):
        g = torch.Generator().manual_seed(seed)
        return {"y": soft_labels(shape, torch.float32, device, g), "image": smooth_image(B, H, W, device, g)}

    def run(backend, inputs):
        fn = baseline[1] if backend == baseline[0] else module
        return forward_backward(lambda y: fn(y, inputs["image"]), "fwd+bwd", [inputs["y"]], 1)

    def expected(inputs):  # the eager formulation in float64 (dense: the per-class lattice in float64)
        return forward_backward(lambda y: baseline[1](y, inputs["image"].double()), "fwd+bwd", [inputs["y"].double()], 1)

    label_bytes = B * K * H * W * 4
    variant = {"window": "GatedCRFLoss r=5", "nn4": "PottsLoss q/nn4", "dense": "DenseCRFLoss sxy=100 srgb=15"}[kind]
    return Case("nn", variant, shape, torch.float32, "fwd+bwd", make_inputs, run, expected,
                2 * label_bytes + B * 3 * H * W * 4, ["cpu", baseline[0]], 1e-4 if kind != "dense" else 2e-4,
                slow=(baseline[0], "cpu") if kind == "dense" else (), slow_reps=3, cpu_memory=True)


# The dense CRF loss on real images (cpu-dense suite): pottsops.nn.DenseCRFLoss and rloss's, side by side.


def gradient_direction_error(outputs, expected):
    """1 - cosine between the gradients (the loss's scale is rloss's own: its lattice's value is about half
    the exact sum, ours about 0.8 of it; benchmarks/dense_accuracy.py measures both against the exact sum)."""
    got, want = outputs[1].double().flatten(), expected[1].double().flatten()
    return float(1 - torch.dot(got, want) / (got.norm() * want.norm()))


def dense_crf_case(size, scale, K=21, sigma_rgb=15.0, sigma_xy=100.0):
    """DenseCRFLoss (weight 1) forward + backward on 2 CamVid images: 'cpu' = pottsops.nn.DenseCRFLoss, 'rloss'
    = rloss's own filter (when POTTSOPS_RLOSS points at a build of it).  Checked before timing: the gradient's
    direction against pottsops' lattice in float64, within 1 %."""
    from benchmarks import rloss
    from pottsops.nn import DenseCRFLoss
    batch_filter, _ = rloss.load()
    ours = DenseCRFLoss(1.0, sigma_rgb, sigma_xy, scale)

    def loss(backend, inputs, y):
        if backend == "rloss":
            return rloss.dense_crf_loss(batch_filter, inputs["image"], y, inputs["rois"], 1.0, sigma_rgb, sigma_xy,
                                        scale)
        return ours(inputs["image"], y, inputs["rois"])

    def run(backend, inputs):
        return forward_backward(lambda y: loss(backend, inputs, y), "fwd+bwd", [inputs["y"]], 1)

    def expected(inputs):
        return forward_backward(lambda y: ours(inputs["image"].double(), y, inputs["rois"].double()), "fwd+bwd",
                                [inputs["y"].double()], 1)

    B, H, W = 2, size, size
    floor = (2 * B * K * H * W * 4 + B * 3 * H * W * 4) * (scale * scale if scale != 1.0 else 1)
    return Case("nn", f"DenseCRFLoss scale={scale:g}", (B, K, H, W), torch.float32, "fwd+bwd",
                lambda device, seed: dense_inputs(size, K, seed), run, expected, int(floor),
                ["cpu"] + (["rloss"] if batch_filter is not None else []), 0.01, cpu_memory=True,
                slow=("rloss", "cpu") if size >= 512 else (), slow_reps=5, compare=gradient_direction_error)


def dense_lattice_potts_case(size, K=21, sigma_rgb=15.0, sigma_xy=100.0):
    """potts_energy(neighborhood='dense', relaxation='bilinear', method='lattice') forward + backward on 2 CamVid
    images: the Potts energy a solver or a loss gets from the same lattice (checked against float64)."""
    def energy(y, image):
        return pottsops.potts_energy(y, image, relaxation="bilinear", neighborhood="dense", sigma_xy=sigma_xy,
                                     sigma_rgb=sigma_rgb, backend="cpu")

    def run(backend, inputs):
        return forward_backward(lambda y: energy(y, inputs["image"]), "fwd+bwd", [inputs["y"]], 1)

    def expected(inputs):
        return forward_backward(lambda y: energy(y, inputs["image"].double()), "fwd+bwd", [inputs["y"].double()], 1)

    B, H, W = 2, size, size
    return Case("potts_energy", "bl/dense-lattice", (B, K, H, W), torch.float32, "fwd+bwd",
                lambda device, seed: dense_inputs(size, K, seed), run, expected, 2 * B * K * H * W * 4,
                ["cpu"], 1e-4, cpu_memory=True, slow=("cpu",) if size >= 512 else (), slow_reps=5)
