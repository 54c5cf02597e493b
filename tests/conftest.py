"""Shared test set-up, and the backends the kernel tests (tests/kernels/) run on.

Without CUDA, Triton kernels run on CPU tensors through the interpreter: TRITON_INTERPRET must be set before any
@triton.jit function is defined, i.e. before tsdi_kernels' Triton kernel modules are imported, so it is set here,
at collection time. Tests that compile kernels for sm_90/sm_80 run in a subprocess without it.
GPU tests carry @pytest.mark.gpu and are skipped where CUDA is absent.

Backend fixtures (parametrised over what exists on this machine: an absent backend is not a parameter)
    kernels, called directly (no dispatcher, no validation; a bad row comes back as its status code). Inputs are
    CPU tensors, moved to the kernel's device and back by the Kernel object:
        kernel           reference, cpp (tsdi_kernels._C, when built), triton (the launchers: compiled on CUDA,
                         else the interpreter on CPU tensors, ~1 ms per program, tile and op, so tests keep its
                         cases at V <= 4096 and few rows: `kernel.interpreted`)
        compiled_kernel  cpp, triton: the kernels checked against the reference
        fast_kernel      compiled kernels not run by the interpreter: cases too large for it
        probs_kernel     the kernels with a debias_probs: reference, cpp
        cpp_kernel, triton_kernel   one of them, for what only it has (threads; launch configurations)
    op backends, torch.ops.tsdi routed with use_backend for the test (what users call):
        op_backend       reference, cpp (CPU tensors), cuda-reference, cuda (CUDA tensors: reference / Triton)
    (the pure-PyTorch reference runs on one intra-op thread: see kernel_testing.single_thread)
Threads: `one_thread` (a whole module on one thread), `num_threads` (set n for a test, restored after).
Checks before loading: `no_model_loading` fails a test that loads a model, a tokenizer or the demo's pair.
The Kernel and OpBackend objects, data factories, float64 statistics and shared assertions:
tests/kernels/kernel_testing.py."""
import contextlib
import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The suite's own model cache (tsdi_kernels.demo.models.cache_dir), set before any test runs and inherited by the
# commands tests start: the converted SmolLM2 is written once into the checkout's git-ignored .test-cache/ and kept
# between runs, and no test reads or writes the user's (~/.cache/tsdi_kernels, or a $TSDI_CACHE set outside).
TEST_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".test-cache", "tsdi_kernels")
os.environ["TSDI_CACHE"] = TEST_CACHE

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels"))  # as pytest does for them
from kernel_testing import REFERENCE, Kernel, kernel_names, op_backends, single_thread  # noqa: E402
from tsdi_kernels.kernels import library  # noqa: E402  (after TRITON_INTERPRET)


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models'
    work is microseconds, and on a shared 2-core machine thread hand-off dominates it."""
    with single_thread():
        yield


@pytest.fixture
def num_threads():
    """set(n): run the test with n intra-op threads from here on; the previous count is restored afterwards.
    (One thread: tiny workloads on a shared 2-core machine, where thread hand-off dominates; 1 versus 2: results
    that must not depend on the thread count.)"""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


# --- kernels and op backends (defined in tests/kernels/kernel_testing.py) ---------------------------------------

_KERNEL_NAMES = kernel_names()
_KERNELS = {"reference": REFERENCE}


def _kernel_fixture(names):
    @pytest.fixture(params=names, ids=str)
    def fixture(request):
        if request.param not in _KERNELS:
            _KERNELS[request.param] = Kernel(request.param)
        return _KERNELS[request.param]

    return fixture


kernel = _kernel_fixture(_KERNEL_NAMES)
compiled_kernel = _kernel_fixture([n for n in _KERNEL_NAMES if n != "reference"])
fast_kernel = _kernel_fixture([n for n in _KERNEL_NAMES if n == "cpp" or (n == "triton" and CUDA)])
probs_kernel = _kernel_fixture([n for n in _KERNEL_NAMES if n != "triton"])  # debias_probs has no Triton kernel
cpp_kernel = _kernel_fixture([n for n in _KERNEL_NAMES if n == "cpp"])
triton_kernel = _kernel_fixture([n for n in _KERNEL_NAMES if n == "triton"])


# --- op backends --------------------------------------------------------------------------------------------------


def _routed(backend):
    """Route the backend's device to it for the test; the pure-PyTorch reference runs on one thread (see
    kernel_testing.single_thread)."""
    with library.use_backend(backend.device, backend.backend), \
            single_thread() if backend.backend == "reference" else contextlib.nullcontext():
        yield backend


@pytest.fixture(params=op_backends(), ids=lambda b: b.name)
def op_backend(request):
    yield from _routed(request.param)


# --- checks before expensive work --------------------------------------------------------------------------------


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a model, a tokenizer or the demo's model pair is loaded (the command line's loaders, tsdi
    eval's, the demo's): every check of arguments and paths must come first."""
    from tsdi_kernels.cli import common, eval as eval_cli
    from tsdi_kernels.demo import models

    def loaded(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the arguments were checked")

    for target, name in ((common, "load_model"), (common, "load_tokenizer"), (eval_cli, "load_models"),
                         (models, "load_pair"), (models, "load_reference"), (models, "default_model_dir")):
        monkeypatch.setattr(target, name, loaded)
