"""Constants written on both sides of the Python / C++ boundary agree: read from the compiled module and
compared with the Python layer's copies (a limit changed on one side only would let the other side accept
what the kernels refuse, or refuse what they accept)."""
import importlib.util

import pytest

from pottsops import _extension, lattice, lattice_tensors, names, neighborhoods

pytestmark = pytest.mark.skipif(not _extension.ensure("cpu"), reason=f"pottsops' C++ kernels are not built: "
                                f"{_extension.describe('cpu')}")


def compiled():
    return _extension.STATUS["cpu"].module


def test_limits_match_the_compiled_kernels():
    c = compiled().constants()
    assert neighborhoods.MAX_OFFSETS == c["max_offsets"]
    assert lattice.MAX_FEATURE == c["max_lattice_feature"]
    assert lattice.MAX_LATTICE_DIM == c["max_lattice_dim"]
    assert lattice_tensors.REACH == c["lattice_reach"]
    assert len(names.RELAXATIONS) == c["num_relaxations"] and len(names.UNARIES) == c["num_unaries"]


@pytest.mark.parametrize("n, d", [(1, 3), (100, 5), (4096, 16), (1 << 24, 16), (1 << 24, 1)])
def test_the_vertex_budget_matches_the_compiled_kernels(n, d):
    assert lattice_tensors.vertex_budget(n, d) == compiled().lattice_vertex_budget(n, d)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the triton package is not installed")
def test_the_triton_tables_follow_the_names():
    from pottsops.triton import math
    relaxations = (math.BILINEAR, math.QUADRATIC, math.NORMALIZED_QUADRATIC, math.COLLISION_CE, math.LOG_QUADRATIC,
                   math.COLLISION_DIVERGENCE)
    assert relaxations == tuple(names.relaxation_index(name) for name in names.RELAXATIONS)
    assert (math.UNARY_CCE, math.UNARY_CE, math.UNARY_RCE) == tuple(names.unary_index(u, "kind") for u in names.UNARIES)
