# make test: from a fresh clone, create .venv, install torch and the rest, build pottsops._C, run pytest.
# make demo: the main job (see README).
#
# CUDA kernels are compiled whenever nvcc is found (FORCE_CUDA=1), so a CUDA compile error fails the build
# even on machines without a GPU.  Override with FORCE_CUDA=0.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda) $(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null)))
FORCE_CUDA ?= $(if $(wildcard $(CUDA_HOME)/bin/nvcc),1,0)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
MAX_JOBS ?= 2
PYTEST_ARGS ?=

export CUDA_HOME FORCE_CUDA TORCH_CUDA_ARCH_LIST MAX_JOBS

CSRC := pottsops/csrc
SOURCES := setup.py pottsops/_build_settings.py $(wildcard $(CSRC)/*.cpp $(CSRC)/*/*.h $(CSRC)/*/*.cpp $(CSRC)/*/*.cu $(CSRC)/*/*.cuh)

.PHONY: test demo build bench clean sanitize check-torch

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	@echo "building pottsops (FORCE_CUDA=$(FORCE_CUDA) CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST))"
	POTTSOPS_AOT=1 $(PY) -m pip install -v --no-build-isolation --no-deps -e . > build.log 2>&1 || (tail -n 60 build.log; exit 1)
	grep -A 7 "pottsops build summary" build.log | sed 's/^ *//'
	$(PY) -c "import pottsops._C" || (echo "pottsops._C failed to build or import"; exit 1)
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pottsops
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests

demo: build
	$(PY) -m pottsops.demo
	$(PY) -m train.demo

bench: build
	rm -f benchmarks/results/cpu/results.csv
	$(PY) -m benchmarks.run --suite cpu --out benchmarks/results/cpu

# make sanitize: the C++ kernels built with AddressSanitizer and UBSan (CPU only, into build/sanitize beside the
# normal build; POTTSOPS_EXTENSION makes the tests load it), then the fuzz suite and the op tests against
# them; any report aborts the process that made it.  alloc_dealloc_mismatch is off: GCO (gco-wrapper, the
# graph-cut extra) frees with delete what its block.h allocated with new[]; pottsops' C++ has no new or delete.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS ?= tests/test_fuzz.py tests/test_ops.py tests/test_potts_energy.py tests/test_unary.py tests/test_dense.py tests/test_solve.py \
	tests/test_graphcut.py
sanitize: $(VENV)/.deps
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	POTTSOPS_AOT=1 POTTSOPS_SANITIZE=1 FORCE_CUDA=0 $(PY) setup.py build_ext --build-lib $(SANITIZE_DIR) \
		--build-temp $(SANITIZE_DIR)/tmp > $(SANITIZE_DIR)/build.log 2>&1 || (tail -n 40 $(SANITIZE_DIR)/build.log; exit 1)
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		POTTSOPS_EXTENSION="$$(ls $(SANITIZE_DIR)/pottsops/_C*.so)" \
		$(PY) -c "import sys, pottsops; s = pottsops._extension.STATUS['cpu']; print('pottsops._C:', s.how); sys.exit(not s.loaded)" && \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		POTTSOPS_EXTENSION="$$(ls $(SANITIZE_DIR)/pottsops/_C*.so)" \
		$(PY) -m pytest -q -ra -p no:cacheprovider $(SANITIZE_TESTS)

clean:
	rm -rf build $(VENV) *.egg-info pottsops/*.so

# make check-torch: the package on another torch than CI's (default the GPU machine's, 2.11), on the CPU: a venv
# with that torch, the kernels built on first use into a cache of its own, and the tests (an import of every
# module included; the install tests, which build wheels, left out).  Run it whenever a change touches a torch
# API.
TORCH_CHECK ?= 2.11.0
TORCHVISION_CHECK ?= 0.26.0
# Triton 3.6's interpreter (torch 2.11's) turns 1-element arrays into ints, which numpy 2.3 and later refuse
NUMPY_CHECK ?= numpy<2.3
CHECK_VENV := .venv-torch-$(TORCH_CHECK)
check-torch:
	test -x $(CHECK_VENV)/bin/python || $(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install -q torch==$(TORCH_CHECK) torchvision==$(TORCHVISION_CHECK) -r requirements-dev.txt \
		"$(NUMPY_CHECK)"
	POTTSOPS_CACHE=$(CURDIR)/$(CHECK_VENV)/cache PYTHONPATH=$(CURDIR) $(CHECK_VENV)/bin/python -m pytest -q -ra \
		-p no:cacheprovider --ignore=tests/test_install.py $(PYTEST_ARGS) tests
