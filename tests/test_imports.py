"""Every module of the package, the trainer, the benchmarks and the experiments imports (run by `make test`
and by `make check-torch` on another torch: an API a torch version lacks shows up here first)."""
import importlib
import os
import pkgutil

import pytest

import pottsops


def modules():
    names = [m.name for m in pkgutil.walk_packages(pottsops.__path__, prefix="pottsops.")]
    for package in ("train", "benchmarks", "experiments"):
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(importlib.import_module(package).__path__)]
    skipped = {"pottsops.__main__", "train.__main__", "pottsops._C"}  # entry points; _C: the build's, if any
    return [name for name in names if name not in skipped]


def test_the_list_is_complete():
    names = modules()
    assert {"pottsops.solver.loop", "pottsops.graphcut", "pottsops.triton.grid_potts", "train.loop",
            "benchmarks.solver_quality"} <= set(names), names


@pytest.mark.parametrize("name", modules())
def test_module_imports(name):
    if name.startswith(("pottsops.triton.", "train.")) and name != "pottsops.triton.checks":
        pytest.importorskip("triton" if name.startswith("pottsops.triton") else "torchvision")
    importlib.import_module(name)


def test_the_build_imports_torchs_extension_tools_without_the_no_cuda_runtime_line():
    """Issue 31 item 10: a CUDA toolkit without a GPU (this machine, CI) made the first compile print torch's
    'No CUDA runtime is found, using CUDA_HOME=...', a warning with nothing to act on."""
    import subprocess
    import sys
    code = "from pottsops import _extension; _extension.quiet_cpp_extension(); print('imported')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda")})
    assert run.returncode == 0 and "imported" in run.stdout, run.stderr
    assert "No CUDA runtime is found" not in run.stderr
