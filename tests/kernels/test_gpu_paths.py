"""The CUDA paths that a machine without a GPU can still check (their GPU halves are in test_gpu.py):

- every Triton launch runs under the tensors' device (Triton launches on the current one), and the SM count is
  the tensors' device's;
- the scalar-parameter cache of api.py never keeps a tensor created during CUDA graph capture;
- the Triton floor: an older Triton is refused by name (import still works, CUDA falls back with one warning);
- a Triton kernel that cannot compile or launch falls back to the reference with one warning naming the cause,
  while bad arguments still raise."""
import contextlib
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

from kernel_testing import HAS_TRITON
from tsdi_kernels.kernels import api, fallback, library, triton_launch
from tsdi_kernels.kernels.accumulate import op as accumulate_op
from tsdi_kernels.kernels.accumulate import reference as accumulate_reference
from tsdi_kernels.kernels.sampling import op as sampling_op
from tsdi_kernels.kernels.sampling import reference as sampling_reference

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sampling_args(batch=3, vocab=96):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, vocab, generator=gen) * 3, torch.randn(4, vocab, generator=gen) * 0.5,
            torch.tensor([0, 2, 9][:batch]), torch.tensor([0.0, 0.7, 1.0][:batch]), torch.tensor([0, 5, 0][:batch]),
            torch.tensor([1.0, 0.9, 0.8][:batch]), torch.tensor([1, 2, 3][:batch]), 0.8)


def _update_args(batch=2, length=3, vocab=80):
    gen = torch.Generator().manual_seed(1)
    stats = [torch.zeros(length, vocab), torch.zeros(length, vocab), torch.zeros(length, dtype=torch.int64)]
    return (*stats, torch.randn(batch, length, vocab, generator=gen), torch.randn(batch, length, vocab, generator=gen),
            None, True)


# --- launches under the tensors' device ---------------------------------------------------------------------------


def test_on_device_enters_the_tensors_cuda_device(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with triton_launch.on_device(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    with triton_launch.on_device(torch.device("cpu")):  # CPU tensors (the interpreter): no CUDA call at all
        pass
    assert entered == [torch.device("cuda", 1)]


def test_sm_count_is_the_tensors_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(multi_processor_count=100 + index))
    triton_launch._cuda_sm_count.cache_clear()
    try:
        assert triton_launch.sm_count(torch.device("cuda", 1)) == 101
        assert triton_launch.sm_count(torch.device("cuda", 0)) == 100
    finally:
        triton_launch._cuda_sm_count.cache_clear()


class _LaunchSpy:
    """Stands in for a @triton.jit kernel: records the device context active at each launch, then launches."""

    def __init__(self, kernel, name, active, launches):
        self.kernel, self.name, self.active, self.launches = kernel, name, active, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.name, list(self.active)))
            return self.kernel[grid](*args, **kwargs)
        return launch


def _spy_launches(monkeypatch, module, names):
    active, launches = [], []

    @contextlib.contextmanager
    def recording_on_device(device):
        active.append(device)
        try:
            yield
        finally:
            active.pop()

    monkeypatch.setattr(module, "on_device", recording_on_device)
    for name in names:
        monkeypatch.setattr(module, name, _LaunchSpy(getattr(module, name), name, active, launches))
    return launches


@needs_triton
def test_every_sampler_launch_runs_under_the_tensors_device(monkeypatch):
    from tsdi_kernels.kernels.sampling import triton_impl

    launches = _spy_launches(monkeypatch, triton_impl, ["_stream_kernel", "_finish_kernel", "_fallback_kernel"])
    args = _sampling_args()
    triton_impl.debias_sample(*args)
    assert [name for name, _ in launches] == ["_stream_kernel", "_finish_kernel", "_fallback_kernel"]
    assert all(devices == [args[0].device] for _, devices in launches), launches


@needs_triton
def test_every_accumulator_launch_runs_under_the_tensors_device(monkeypatch):
    from tsdi_kernels.kernels.accumulate import triton_impl

    names = ["_row_stats_kernel", "_merge_kernel", "_combine_kernel", "_count_kernel"]
    launches = _spy_launches(monkeypatch, triton_impl, names)
    args = _update_args(batch=8, length=1)
    triton_impl.logit_mean_update(*args, groups=2)  # the grouped path: all four kernels
    assert [name for name, _ in launches] == names
    assert all(devices == [args[3].device] for _, devices in launches), launches


# --- the parameter cache and CUDA graph capture --------------------------------------------------------------------


def test_no_cached_parameter_is_created_during_graph_capture(monkeypatch):
    """A tensor created while a CUDA graph is captured is only recorded (filled at replay): caching it would hand
    garbage to every later eager call. Simulated on CPU: the capture query says yes, a 'cuda' tensor is a CPU one."""
    real_full = torch.full
    made = []

    def full_on_cpu(size, value, *, dtype, device):
        made.append(device)
        return real_full(size, value, dtype=dtype)

    monkeypatch.setattr(torch, "full", full_on_cpu)
    cuda = torch.device("cuda", 0)
    value = 0.123456  # a value no other test caches
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    first = api._per_row("temperature", value, 5, torch.float32, cuda)
    second = api._per_row("temperature", value, 5, torch.float32, cuda)
    assert first is not second and len(made) == 2  # made for each call, kept by none
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    third = api._per_row("temperature", value, 5, torch.float32, cuda)
    assert third is not first and third is not second  # the capture's tensors never entered the cache
    assert api._per_row("temperature", value, 5, torch.float32, cuda) is third  # outside capture: cached
    assert torch.equal(third, torch.full_like(third, value))


# --- the Triton floor ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version, usable", [("3.2.0", False), ("3.3.1", False), ("3.4.0", True), ("3.6.0", True),
                                             ("3.10.0+git1a2b", True), ("4.0.0", True), ("nightly", False)])
def test_triton_floor_refuses_older_versions_by_name(monkeypatch, version, usable):
    monkeypatch.setattr(library, "triton_version", lambda: version)
    assert library.has_triton() is usable
    if usable:
        assert library.triton_problem() is None
        library.check_backend("cuda", "triton")
    else:
        assert f"triton {version} is older than 3.4" in library.triton_problem()
        with pytest.raises(RuntimeError, match=f"triton {version} is older than 3.4"):
            library.check_backend("cuda", "triton")


@needs_triton
def test_triton_version_is_read_without_importing_it():
    code = "import sys; from tsdi_kernels.kernels import library; print(library.triton_version(), 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    import triton

    assert out.split() == [triton.__version__, "False"]


def _with_fake_triton(tmp_path, version, extra_env=None):
    """`import tsdi_kernels` in a fresh process whose `triton` is a stand-in of the given version."""
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text(f"__version__ = '{version}'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TSDI_CUDA_BACKEND", "PYTHONPATH")}
    env.update({"PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT]), **(extra_env or {})})
    code = ("import warnings, tsdi_kernels\n"
            "from tsdi_kernels.kernels import library\n"
            "print(tsdi_kernels.backends()['debias_sample']['cuda'])\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    library.reference_notice('cuda'); library.reference_notice('cuda')\n"
            "print(len(w)); print(w[0].message if w else '')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path))


def test_old_triton_imports_and_warns_once_at_the_first_cuda_call(tmp_path):
    proc = _with_fake_triton(tmp_path, "3.3.1")
    assert proc.returncode == 0, proc.stderr
    backend, n_warnings, message = proc.stdout.strip().splitlines()
    assert backend == "reference" and n_warnings == "1"
    assert "triton 3.3.1 is older than 3.4" in message and "reference" in message


def test_old_triton_asked_for_by_name_is_refused_at_import(tmp_path):
    proc = _with_fake_triton(tmp_path, "3.3.1", {"TSDI_CUDA_BACKEND": "triton"})
    assert proc.returncode != 0
    assert "RuntimeError: triton 3.3.1 is older than 3.4" in proc.stderr


def test_reference_notice_is_silent_when_the_caller_chose_the_backend(monkeypatch):
    monkeypatch.setattr(library, "_REFUSED_TRITON", ["triton 3.3.1 is older than 3.4"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with library.use_backend("cuda", "reference"):
            library.reference_notice("cuda")
        library.reference_notice("cpu")
    with pytest.warns(RuntimeWarning, match="3.3.1"):
        library.reference_notice("cuda")


# --- fallback when a Triton kernel cannot compile or launch ---------------------------------------------------------


@pytest.fixture
def fresh_fallback():
    fallback.reset()
    yield
    fallback.reset()


def _raise(exc):
    def launcher(*args, **kwargs):
        raise exc
    return launcher


CAUSE = "ptxas fatal: Value 'sm_61' is not defined for option 'gpu-name'"


def test_sampler_falls_back_to_the_reference_with_one_warning(monkeypatch, fresh_fallback):
    from tsdi_kernels.kernels.sampling import triton_impl

    monkeypatch.setattr(triton_impl, "debias_sample", _raise(RuntimeError(CAUSE)))
    args = _sampling_args()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = sampling_op._SAMPLE["triton"](*args)
        second, _ = sampling_op._SAMPLE["triton"](*args)
    expected = sampling_reference.debias_sample(*args)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    ours = [w for w in caught if "Triton kernel" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "debias_sample" in str(ours[0].message) and "RuntimeError: " + CAUSE in str(ours[0].message)
    assert fallback.failed_cause("debias_sample", args[0].device) == "RuntimeError: " + CAUSE


def test_sampler_fallback_does_not_swallow_value_errors(monkeypatch, fresh_fallback):
    from tsdi_kernels.kernels.sampling import triton_impl

    monkeypatch.setattr(triton_impl, "debias_sample", _raise(ValueError("`top_p` must be in (0, 1]")))
    with pytest.raises(ValueError, match="top_p"):
        sampling_op._SAMPLE["triton"](*_sampling_args())
    assert fallback.failed_cause("debias_sample", torch.device("cpu")) is None


@needs_triton
def test_sampler_without_failure_runs_triton(monkeypatch, fresh_fallback):
    from tsdi_kernels.kernels.sampling import triton_impl

    calls = []
    real = triton_impl.debias_sample
    monkeypatch.setattr(triton_impl, "debias_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens, _ = sampling_op._SAMPLE["triton"](*_sampling_args())
    assert calls == [1] and tokens.shape == (3,) and (tokens >= 0).all()
    assert not [w for w in caught if "Triton kernel" in str(w.message)]


def test_accumulator_falls_back_to_the_reference_with_one_warning(monkeypatch, fresh_fallback):
    from tsdi_kernels.kernels.accumulate import triton_impl

    monkeypatch.setattr(triton_impl, "logit_mean_update", _raise(RuntimeError(CAUSE)))
    ours, theirs = _update_args(), _update_args()
    with pytest.warns(RuntimeWarning, match="logit_mean_update") as caught:
        accumulate_op._UPDATE["triton"](*ours)
        accumulate_op._UPDATE["triton"](*ours)
    assert sum("Triton kernel" in str(w.message) for w in caught) == 1
    for _ in range(2):
        accumulate_reference.logit_mean_update(*theirs)
    for got, want in zip(ours[:3], theirs[:3]):
        assert torch.equal(got, want)


def test_accumulator_failure_after_an_in_place_write_is_raised(monkeypatch, fresh_fallback):
    """A failure after a kernel updated mean / m2 cannot be redone on the reference (the update would count
    twice): raised, not hidden."""
    from tsdi_kernels.kernels.accumulate import triton_impl

    def fails_late(*args, progress, **kwargs):
        progress["statistics_written"] = True
        raise RuntimeError(CAUSE)

    monkeypatch.setattr(triton_impl, "logit_mean_update", fails_late)
    with pytest.raises(RuntimeError, match="sm_61"):
        accumulate_op._UPDATE["triton"](*_update_args())
    assert fallback.failed_cause("logit_mean_update", torch.device("cpu")) is None


def test_out_of_memory_is_not_a_reason_to_fall_back(monkeypatch, fresh_fallback):
    from tsdi_kernels.kernels.sampling import triton_impl

    monkeypatch.setattr(triton_impl, "debias_sample", _raise(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.OutOfMemoryError):
        sampling_op._SAMPLE["triton"](*_sampling_args())
