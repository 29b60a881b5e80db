"""The Triton kernels compiled for an H100/H200 (sm_90) on the CPU: Triton's front end, its GPU passes and
ptxas run without a GPU, so what the interpreter never checks is checked here (in a child process without
TRITON_INTERPRET, which the tests set on machines without a GPU).

- torch.compile (Inductor) passes a Python float to a kernel as fp64 on GPUs with fp64, so eps must not turn
  the fp32 accumulators of the loops into fp64 (Triton refuses a loop-carried variable that changes type):
  every kernel is compiled with eps as fp64, for every relaxation and unary.
- Shared memory: the exact dense kernels at their largest class count fit in a block's 227 KB on sm_90.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="the triton package is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SM90_SHARED = 232448  # bytes of shared memory a block may use on sm_90

CHILD = r"""
import json, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

target = GPUTarget("cuda", 90, 32)

def compile_kernel(fn, constexprs, types):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in types:
            signature[name] = types[name]
        else:
            signature[name] = "*fp32" if name.endswith("_ptr") else "i32"
    return triton.compile(ASTSource(fn, signature, constexprs), target=target)

@triton.jit
def probe(x_ptr):
    tl.store(x_ptr, 1.0)
try:
    compile_kernel(probe, {}, {})
except Exception as error:
    print(json.dumps({"skip": f"{type(error).__name__}: {str(error)[:200]}"}))
    sys.exit(0)

from pottsops.triton import dense_potts, grid_potts, unary
results = []

def run(name, fn, constexprs, types):
    try:
        compiled = compile_kernel(fn, constexprs, types)
        results.append({"kernel": name, "shared": compiled.metadata.shared})
    except Exception as error:
        results.append({"kernel": name, "error": f"{type(error).__name__}: {str(error)[-600:]}"})

grid_types = {"eps": "fp64", "mask_ptr": "*u8", "dy_ptr": "*i32", "dx_ptr": "*i32"}
for rel in range(6):
    common = dict(REL=rel, HAS_IMAGE=True, HAS_WEIGHTS=False, HAS_MASK=True, ACC=tl.float32, BLOCK_K=32, BLOCK_P=64)
    run(f"grid energy rel {rel}", grid_potts._energy_kernel, common, grid_types)
    run(f"grid backward rel {rel}", grid_potts._backward_kernel, dict(common, WEIGHTS_GRAD=False), grid_types)
run("grid backward weights", grid_potts._backward_kernel,
    dict(REL=0, HAS_IMAGE=False, HAS_WEIGHTS=True, HAS_MASK=True, ACC=tl.float32, BLOCK_K=32, BLOCK_P=64,
         WEIGHTS_GRAD=True), grid_types)
run("grid affinity", grid_potts._affinity_kernel, dict(HAS_MASK=True, ACC=tl.float32, BLOCK_P=64), grid_types)
for kind in range(3):
    constexprs = dict(UNARY=kind, HAS_MASK=True, ACC=tl.float32, BLOCK_K=32, BLOCK_P=64)
    run(f"unary forward {kind}", unary._forward_kernel, constexprs, {"eps": "fp64", "mask_ptr": "*u8"})
    run(f"unary backward {kind}", unary._backward_kernel, constexprs, {"eps": "fp64", "mask_ptr": "*u8"})
for rel, classes in ((0, dense_potts.MAX_CLASSES), (3, 16), (5, 16)):
    constexprs = dict(REL=rel, PRECISION="ieee", KP=classes, DP=16, BI=dense_potts.BLOCK_I, BJ=dense_potts.BLOCK_J)
    for name, fn in (("energy", dense_potts._energy_kernel), ("backward", dense_potts._backward_kernel)):
        run(f"dense {name} rel {rel} K {classes}", fn, constexprs, {"eps": "fp64", "m_ptr": "*u8"})
print(json.dumps({"results": results}))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    script = tmp_path_factory.mktemp("triton") / "compile_for_sm90.py"  # @triton.jit wants a source file
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"Triton cannot compile for sm_90 here: {out['skip']}")
    return out["results"]


def test_every_kernel_compiles_with_an_fp64_eps(compiled):
    failed = [r for r in compiled if "error" in r]
    assert len(compiled) == 6 * 2 + 2 + 3 * 2 + 3 * 2 and not failed, failed


def test_the_dense_kernels_fit_in_shared_memory_at_their_largest_class_count(compiled):
    dense = [r for r in compiled if r["kernel"].startswith("dense") and "error" not in r]
    assert dense and all(r["shared"] <= SM90_SHARED for r in dense), dense


def test_the_pair_table_made_under_fake_tensors_is_not_cached():
    """A first call under a fake-tensor mode (torch.compile's tracing, opcheck) must not leave fake tensors in
    the cache that a later eager launch would read."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from pottsops.triton import grid_potts
    key = ((0, 1, 1, 0), (1.0, 0.5), torch.device("cpu"), torch.float32)
    grid_potts._cached_pair_table.cache_clear()
    with FakeTensorMode():
        assert isinstance(grid_potts._pair_table(*key)[0], FakeTensor)
    eager = grid_potts._pair_table(*key)
    assert not any(isinstance(t, FakeTensor) for t in eager) and eager[0].tolist() == [0, 1]


def test_limits_of_the_launch_shape_are_errors_naming_the_argument():
    """More images than grid rows (65535), or more classes than the exact dense tiles hold, are refused
    before a launch (meta tensors: nothing is allocated)."""
    import torch
    from pottsops.triton import checks, dense_potts
    with pytest.raises(ValueError, match="y: the Triton kernels take at most 65535 images"):
        checks.grid_args(torch.empty(65536, 3, 2, 2, device="meta"), None, None, None, None, [0, 1], [1.0], 0, 1e-8)
    with pytest.raises(ValueError, match="logits: the Triton kernels take at most 65535 images"):
        y = torch.empty(65536, 3, 2, 2, device="meta")
        checks.unary_args(y, y, None, 0, 1e-8)
    y = torch.empty(1, dense_potts.MAX_CLASSES + 1, 4, 4)
    with pytest.raises(ValueError, match=f"y: the exact dense Triton kernels take at most {dense_potts.MAX_CLASSES}"):
        dense_potts.dense_potts_energy(y, torch.zeros(1, 5, 4, 4), None, "bilinear", 1e-8)
