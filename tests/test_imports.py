"""Every module of the package, the trainer, the benchmarks and the experiments imports (run by `make test`
and by `make check-torch` on another torch: an API a torch version lacks shows up here first)."""
import importlib
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
