"""What the compiled kernels are built from and how: the version, the sources, the flags and the sources' digest.

Read by setup.py without importing pottsops (which imports torch), and by pottsops/_extension.py, which loads
or builds the kernels.  No import here beyond the standard library.

SOURCE_PATTERNS are the files under csrc that ship in the wheel (pyproject.toml's package-data lists the same
patterns; tests/test_install.py checks that the wheel holds exactly these files): the digest that an
ahead-of-time build records in _C.json is a hash of them and nothing else, so an installed copy and a clone
of the same version agree on it.
"""
import glob
import hashlib
import os

VERSION = "0.1.0"
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCE_PATTERNS = ("*.cpp", "*/*.cpp", "*/*.h", "*/*.cu", "*/*.cuh")
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def source_files(csrc=CSRC):
    """Every shipped C++ / CUDA source and header under csrc, sorted."""
    return sorted({p for pattern in SOURCE_PATTERNS for p in glob.glob(os.path.join(csrc, pattern))})


def cpu_sources():
    """The C++ sources of the CPU module: schemas, host checks and the CPU kernels."""
    return [p for p in source_files() if p.endswith(".cpp")]


def cuda_sources():
    return [p for p in source_files() if p.endswith(".cu")]


def host_checks_source():
    """The launchers' host checks, linked into the CUDA library as well as the CPU module."""
    return os.path.join(CSRC, "grid_args.cpp")


def cxx_flags():
    """The CPU kernels are written to auto-vectorise; -march sets the vector width (POTTSOPS_CPU_ARCH,
    default native: this machine's; x86-64 for a portable build).  POTTSOPS_SANITIZE=1 adds ASan + UBSan."""
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
             f"-march={os.environ.get('POTTSOPS_CPU_ARCH', 'native')}"]
    if os.environ.get("POTTSOPS_SANITIZE") == "1":
        flags = [f for f in flags if f != "-O3"] + ["-O1"] + SANITIZE
    return flags


def link_flags():
    return ["-fopenmp"] + (SANITIZE if os.environ.get("POTTSOPS_SANITIZE") == "1" else [])


def sources_digest(csrc=CSRC):
    """A hash of the shipped sources (names relative to csrc, and contents): what a build was made from."""
    digest = hashlib.sha256()
    for name in source_files(csrc):
        digest.update(os.path.relpath(name, csrc).encode())
        with open(name, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:20]
