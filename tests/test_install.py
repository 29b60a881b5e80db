"""pip install that just works (issue 18): an isolated `pip wheel .` makes a pure-Python wheel that carries the
kernels' sources; installed into a fresh environment (one that sees this one's torch through a .pth file,
but not its editable pottsops), the first CPU call compiles the kernels into an empty cache and matches the
reference, a later process reuses the cache, two processes started together build once, a killed build
leaves no lock behind, POTTSOPS_JIT=0 falls back with its reason, and an installed _C built for another
torch is skipped.  The kernels are compiled once for the whole module (a few minutes on 2 cores)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import pytest
import torch

from pottsops import _build_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: nothing to build on first use")

CHECK = """
import sys, torch, pottsops
y = torch.softmax(torch.randn(2, 5, 17, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 1)
fast, slow = pottsops.potts_energy(y, backend="auto"), pottsops.potts_energy(y, backend="reference")
print(repr(float(fast)), repr(float(slow)), pottsops.backends()["cpu"], sep="\\n")
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(python of a fresh environment with the wheel installed, its folder, the wheel's build seconds)."""
    root = tmp_path_factory.mktemp("install")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", str(root / "wheel")],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - start
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:  # torch, numpy, ninja from here; not its pottsops
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((root / "wheel").glob("pottsops-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    return python, root, seconds, wheel


def run(python, code, cache, **env):
    return subprocess.Popen([python, "-c", code], cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "POTTSOPS_CACHE": str(cache), "TRITON_INTERPRET": "0", **env})


def test_the_wheel_is_pure_python_with_the_sources(env):
    _, _, seconds, wheel = env
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.endswith("py3-none-any.whl") and not [n for n in names if n.endswith((".so", ".pyd"))]
    assert "pottsops/csrc/ops.cpp" in names and "pottsops/csrc/cuda/grid_potts.cu" in names
    shipped = sorted(n for n in names if n.startswith("pottsops/csrc/"))
    assert shipped == sorted("pottsops/csrc/" + os.path.relpath(p, _build_settings.CSRC)
                             for p in _build_settings.source_files())  # what the digest hashes, no more
    assert "pottsops/_C.json" not in names
    print(f"isolated pip wheel: {seconds:.1f} s")
    assert seconds < 120


def test_first_use_builds_once_for_two_processes_then_the_cache_serves(env):
    python, root, _, _ = env
    cache = root / "cache"
    start = time.perf_counter()
    first, second = run(python, CHECK, cache), run(python, CHECK, cache)
    outputs = [p.communicate(timeout=1800) for p in (first, second)]
    build_seconds = time.perf_counter() - start
    assert first.returncode == 0 and second.returncode == 0, outputs
    built = [err for _, err in outputs if "pottsops: compiling the C++ kernels (first use)" in err]
    assert len(built) == 1, [err for _, err in outputs]  # one built; the other waited, then loaded its build
    for out, _ in outputs:
        fast, slow, status = out.strip().splitlines()
        assert abs(float(fast) - float(slow)) <= 1e-9 * abs(float(slow))
        assert "C++ kernels" in status and ("built now" in status or "cached" in status), status
    start = time.perf_counter()
    out, err = run(python, CHECK, cache).communicate(timeout=300)
    cached_seconds = time.perf_counter() - start
    assert "compiling" not in err and "cached" in out, (out, err)
    print(f"first-use build (two processes): {build_seconds:.0f} s; a later process, cached: {cached_seconds:.1f} s")


def test_a_killed_build_leaves_no_lock(env):
    """A build killed mid-compile: the next process takes the lock and builds (it is killed too, once it has
    started compiling: the test needs no second full build)."""
    python, root, _, _ = env
    cache = root / "cache-killed"
    for _ in range(2):
        process = run(python, CHECK, cache, POTTSOPS_CPU_ARCH="x86-64")  # another key than the full build's
        deadline = time.time() + 120
        seen = ""
        while time.time() < deadline and "compiling" not in seen:
            seen += os.read(process.stderr.fileno(), 4096).decode()
        assert "compiling the C++ kernels" in seen, seen
        time.sleep(3)
        process.send_signal(signal.SIGKILL)
        process.wait()
    shutil.rmtree(cache)


def test_building_turned_off_falls_back_with_the_reason(env):
    python, root, _, _ = env
    out, err = run(python, CHECK, root / "cache-empty", POTTSOPS_JIT="0").communicate(timeout=300)
    fast, slow, status = out.strip().splitlines()
    assert float(fast) == float(slow) and "unavailable: building on first use is turned off (POTTSOPS_JIT=0)" in status
    assert "compiling" not in err


def test_an_ahead_of_time_module_for_another_torch_or_other_sources_is_skipped(env):
    python, root, _, _ = env
    site = subprocess.run([python, "-c", "import pottsops, os; print(os.path.dirname(pottsops.__file__))"],
                          check=True, capture_output=True, text=True, cwd="/").stdout.strip()
    cached = next((root / "cache").glob("cpu-*/pottsops_cpu_*.so"))
    shutil.copy(cached, os.path.join(site, "_C" + sysconfig.get_config_var("EXT_SUFFIX")))
    with open(os.path.join(site, "_C.json"), "w") as f:
        json.dump({"torch": "1.0.0", "python": sys.implementation.cache_tag}, f)
    try:
        out, err = run(python, CHECK, root / "cache").communicate(timeout=300)
        assert "was built for torch 1.0.0" in err and "skipped" in err, err
        assert "cached" in out.strip().splitlines()[-1]
        with open(os.path.join(site, "_C.json"), "w") as f:  # the right torch, older C++ sources
            json.dump({"torch": torch.__version__, "python": sys.implementation.cache_tag, "sources": "0" * 20}, f)
        out, err = run(python, CHECK, root / "cache").communicate(timeout=300)
        assert "was built from other C++ sources" in err and "skipped" in err, err
        assert "cached" in out.strip().splitlines()[-1]
    finally:
        os.remove(os.path.join(site, "_C.json"))
        os.remove(os.path.join(site, "_C" + sysconfig.get_config_var("EXT_SUFFIX")))


def test_commands(env):
    python, root, _, _ = env
    environment = {**os.environ, "POTTSOPS_CACHE": str(root / "cache")}
    status = subprocess.run([python, "-m", "pottsops"], capture_output=True, text=True, env=environment, cwd="/")
    assert "cpu        available: C++ kernels" in status.stdout and "cached" in status.stdout, status.stdout
    built = subprocess.run([python, "-m", "pottsops", "build"], capture_output=True, text=True, env=environment, cwd="/")
    assert built.returncode == 0 and "cpu: cached" in built.stdout, built.stdout + built.stderr
    copy = root / "cache-copy"
    shutil.copytree(root / "cache", copy)
    cleaned = subprocess.run([python, "-m", "pottsops", "clean"], capture_output=True, text=True,
                             env={**environment, "POTTSOPS_CACHE": str(copy)}, cwd="/")
    assert cleaned.returncode == 0 and not list(copy.glob("cpu-*")), cleaned.stdout


def test_nothing_compiles_while_torch_compile_traces(env):
    """With nothing built, a compiled function traces the reference ops; the kernels are not built mid-trace."""
    python, root, _, _ = env
    code = CHECK.replace('fast, slow = pottsops.potts_energy(y, backend="auto")',
                         'fast, slow = torch.compile(lambda t: pottsops.potts_energy(t), fullgraph=True)(y)')
    out, err = run(python, code, root / "cache-compile").communicate(timeout=600)
    fast, slow, status = out.strip().splitlines()
    assert abs(float(fast) - float(slow)) <= 1e-9 * abs(float(slow)) and "compiling" not in err, err
    assert "not built yet" in status


@pytest.fixture(scope="module")
def aot(tmp_path_factory):
    """(a copy of the repository, the ahead-of-time wheel built from it with POTTSOPS_AOT=1 (CPU kernels only),
    the python of a fresh environment with that wheel installed)."""
    root = tmp_path_factory.mktemp("aot")
    tree = root / "tree"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    for name in listed:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(tree / name), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), tree / name)
    environment = {**os.environ, "POTTSOPS_AOT": "1", "FORCE_CUDA": "0", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-build-isolation", "--no-deps", "-q",
                            "-w", str(root / "wheel")], capture_output=True, text=True, env=environment)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((root / "wheel").glob("pottsops-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    return tree, wheel, python


def test_an_ahead_of_time_wheel_loads_its_own_module_without_compiling(aot, tmp_path):
    """The documented cluster path (POTTSOPS_AOT=1): the wheel carries _C and _C.json, and the installed copy
    loads that _C, with an empty cache, no warning and nothing compiled."""
    _, wheel, python = aot
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "pottsops/_C.json" in names and [n for n in names if n.startswith("pottsops/_C") and n.endswith(".so")]
    out, err = run(python, CHECK, tmp_path / "empty-cache").communicate(timeout=300)
    fast, slow, status = out.strip().splitlines()
    assert abs(float(fast) - float(slow)) <= 1e-9 * abs(float(slow))
    assert "ahead-of-time" in status, status
    assert "compiling" not in err and "skipped" not in err and "RuntimeWarning: pottsops" not in err, err
    assert not (tmp_path / "empty-cache").exists() or not list((tmp_path / "empty-cache").iterdir())


def test_a_pure_wheel_from_a_tree_with_an_ahead_of_time_build_carries_no_module(aot, tmp_path):
    """pip wheel . where an ahead-of-time build left _C in build/lib (and _C.json in the tree): pure Python."""
    tree, _, _ = aot
    environment = {k: v for k, v in os.environ.items() if k != "POTTSOPS_AOT"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, env=environment)
    import zipfile
    names = zipfile.ZipFile(next(tmp_path.glob("pottsops-*.whl"))).namelist()
    assert not [n for n in names if n.startswith("pottsops/_C")], names


QUICK_START_PRELUDE = """
import torch
g = torch.Generator().manual_seed(15)
images = torch.rand(2, 3, 16, 20, generator=g) * 255
scribbles = torch.full((2, 16, 20), 255)
scribbles[:, 3, 2:9], scribbles[:, 12, 5:15] = 0, 2
conv = torch.nn.Conv2d(3, 3, 3, padding=1)
model = lambda x: conv(x / 255)
"""


def test_the_readme_quick_start_and_the_demo_run_from_the_installed_wheel(env, tmp_path):
    """Issue 31: what a new user runs first, in the fresh environment (the wheel; torch, matplotlib and the
    graph-cut extra from this one's site-packages, as the extras the README names would install them)."""
    import re
    python, root, _, _ = env
    environment = {**os.environ, "POTTSOPS_CACHE": str(root / "cache")}
    with open(os.path.join(ROOT, "README.md")) as f:
        quick_start = re.search(r"## Quick start\n\n```python\n(.*?)```", f.read(), re.S).group(1)
    code = QUICK_START_PRELUDE + quick_start + "\nprint('quick start', float(loss), float(e), pottsops.__file__)"
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, env=environment, cwd="/")
    assert run.returncode == 0 and "quick start" in run.stdout, run.stderr[-2000:]
    assert "site-packages" in run.stdout and ROOT not in run.stdout  # the installed pottsops, not this tree
    demo = subprocess.run([python, "-m", "pottsops.demo", "--out", str(tmp_path / "demo.png"), "--iters", "20"],
                          capture_output=True, text=True, env=environment, cwd="/")
    assert demo.returncode == 0 and (tmp_path / "demo.png").stat().st_size > 10_000, demo.stderr[-2000:]
