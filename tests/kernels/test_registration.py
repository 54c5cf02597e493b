"""How the ops are registered and routed: torch.library.opcheck and torch.compile(fullgraph=True) on every op
backend, the package without its compiled extension, and backend selection (validated, per thread)."""
import os
import subprocess
import sys
import threading

import pytest
import torch

import tsdi_kernels
from kernel_testing import L_BIAS, ROW_CASES, case_batch, make_bias, make_logits
from tsdi_kernels.kernels import library


def _samples(op_backend):
    """(logits, bias, positions, temperature, top_k, top_p, seed) on the backend's device."""
    batch = case_batch(make_logits(len(ROW_CASES), 300, ties="top", neg_inf="band"), make_bias(L_BIAS, 300))
    return op_backend.to(*batch.sample_args()[:7])


def _accumulator_inputs(op_backend):
    aligned, ref = torch.randn(4, 3, 300), torch.randn(4, 3, 300)
    state = (torch.zeros(3, 300), torch.zeros(3, 300), torch.zeros(3, dtype=torch.int64))
    return op_backend.to(*state), op_backend.to(aligned, ref, torch.rand(4, 3) < 0.5)


def test_opcheck(op_backend):
    logits, bias, positions, temperature, top_k, top_p, seed = _samples(op_backend)
    torch.library.opcheck(torch.ops.tsdi.debias_sample.default,
                          (logits, bias, positions, temperature, top_k, top_p, seed, 0.5))
    torch.library.opcheck(torch.ops.tsdi.debias_sample.default,
                          (logits.bfloat16(), None, positions, temperature, top_k, top_p, seed))
    torch.library.opcheck(torch.ops.tsdi.debias_probs.default,
                          (logits, bias, positions, temperature, top_k, top_p, 1.0))
    _, (aligned, ref, mask) = _accumulator_inputs(op_backend)
    for normalize in (True, False):
        state, _ = _accumulator_inputs(op_backend)
        torch.library.opcheck(torch.ops.tsdi.logit_mean_update.default, (*state, aligned, ref, mask, normalize))
        torch.library.opcheck(torch.ops.tsdi.logit_mean_update.default, (*state, aligned, None, None, normalize))


def test_torch_compile_fullgraph(op_backend):
    torch._dynamo.reset()
    args = _samples(op_backend)

    def step(logits, bias, positions, temperature, top_k, top_p, seed):
        tokens = torch.ops.tsdi.debias_sample(logits * 1.0, bias, positions, temperature, top_k, top_p, seed, 1.0)
        probs = torch.ops.tsdi.debias_probs(logits, bias, positions, temperature, top_k, top_p, 1.0)
        return tokens, probs

    def accumulate(mean, m2, count, aligned, ref):
        torch.ops.tsdi.logit_mean_update(mean, m2, count, aligned, ref, None, True)
        return mean.sum()

    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True)(*args)
    assert torch.equal(eager[0], compiled[0])
    torch.testing.assert_close(eager[1], compiled[1], atol=0, rtol=0)

    s_eager, (aligned, ref, _) = _accumulator_inputs(op_backend)
    s_comp = [t.clone() for t in s_eager]
    accumulate(*s_eager, aligned, ref)
    torch.compile(accumulate, fullgraph=True, backend="aot_eager")(*s_comp, aligned, ref)
    for a, b in zip(s_eager, s_comp):
        assert torch.equal(a, b)


@pytest.mark.slow  # a subprocess that imports torch
def test_package_works_without_the_extension():
    """A machine whose torch differs from the build's cannot load _C: the package must still import, say so in
    backends(), and serve every op from the reference (simulated with TSDI_DISABLE_EXTENSION=1)."""
    code = (
        "import torch, tsdi_kernels\n"
        "from tsdi_kernels.kernels import library as ops\n"
        "assert not ops.HAS_EXTENSION and 'TSDI_DISABLE_EXTENSION' in ops.EXTENSION_ERROR\n"
        "assert all(v['cpu'] == 'reference' for v in tsdi_kernels.backends().values())\n"
        "x = torch.randn(3, 50)\n"
        "t = torch.compile(lambda x: tsdi_kernels.debias_sample(x, top_k=5, seed=torch.arange(3)), fullgraph=True)(x)\n"
        "assert t.shape == (3,) and (tsdi_kernels.debias_probs(x, top_k=5)[torch.arange(3), t] > 0).all()\n"
        "acc = tsdi_kernels.BiasTable.empty(2, 50); acc.update(torch.randn(4, 2, 50), torch.randn(4, 2, 50))\n"
        "assert acc.count.tolist() == [4, 4]\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TSDI_DISABLE_EXTENSION="1")
    env.pop("TSDI_CPU_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


# --- backend selection ------------------------------------------------------------------------------------------


def test_backend_switch_validates():
    with pytest.raises(ValueError, match="backend"):
        with library.use_backend("cpu", "triton"):
            pass
    with pytest.raises(ValueError, match="device"):
        library.set_backend("tpu", "reference")
    info = tsdi_kernels.backends()
    assert set(info) == {"debias_sample", "debias_probs", "logit_mean_update"}
    assert info["debias_sample"]["cpu"] in ("cpp", "reference")


def _other_backend():
    """(device, name, default): a backend this machine can select that is not the device's current default."""
    for device, names in library.AVAILABLE.items():
        for name in names:
            if name == library.backend_for(device):
                continue
            try:
                library.check_backend(device, name)
            except (ValueError, RuntimeError):
                continue
            return device, name, library.backend_for(device)
    pytest.skip("no device has a second backend here")


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller)
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_use_backend_in_one_thread_does_not_affect_another():
    """One thread inside use_backend; another sees the default, and so do both once it has left."""
    device, name, default = _other_backend()
    inside, release = threading.Event(), threading.Event()

    def worker():
        with library.use_backend(device, name):
            seen = library.backend_for(device), tsdi_kernels.backends()["logit_mean_update"][device]
            inside.set()
            assert release.wait(30)
        return seen, library.backend_for(device)

    thread, box = _in_thread(worker)
    assert inside.wait(30)
    elsewhere = library.backend_for(device), tsdi_kernels.backends()["logit_mean_update"][device]
    release.set()
    thread.join(30)
    assert "error" not in box, box
    assert box["result"] == ((name, name), default)
    assert elsewhere == (default, default)
    assert library.backend_for(device) == default


def test_overlapping_use_backend_in_two_threads_restores_the_default():
    """A enters, B enters, A leaves, B leaves: with one shared override, B would restore A's choice for good."""
    device, name, default = _other_backend()
    steps = [threading.Event() for _ in range(4)]  # A in, B in, A out, B out

    def thread_body(enter_after, entered, leave_after, left):
        def body():
            if enter_after is not None:
                assert steps[enter_after].wait(30)
            with library.use_backend(device, name):
                steps[entered].set()
                assert steps[leave_after].wait(30)
                inside = library.backend_for(device)
            steps[left].set()
            return inside, library.backend_for(device)
        return body

    a, box_a = _in_thread(thread_body(None, 0, 1, 2))
    b, box_b = _in_thread(thread_body(0, 1, 2, 3))
    a.join(30)
    b.join(30)
    assert box_a.get("result") == (name, default), box_a
    assert box_b.get("result") == (name, default), box_b
    assert library.backend_for(device) == default


def test_set_backend_changes_the_default_but_not_an_override():
    device, name, default = _other_backend()
    inside, changed = threading.Event(), threading.Event()

    def worker():
        with library.use_backend(device, default):
            inside.set()
            assert changed.wait(30)
            return library.backend_for(device)

    thread, box = _in_thread(worker)
    try:
        assert inside.wait(30)
        library.set_backend(device, name)
        assert library.backend_for(device) == name
        changed.set()
        thread.join(30)
    finally:
        changed.set()
        library.set_backend(device, default)
    assert box.get("result") == default, box
    assert library.backend_for(device) == default
