"""tsdi::debias_probs, the exact distribution debias_sample draws from: through torch.ops on every op backend
against Hugging Face's own warpers (fp32 atol 1e-6: tier 1 of exact distribution, support, frequencies), and each kernel that has it (the
C++ kernels; the Triton path serves it from the reference) against the reference, status codes included."""
import contextlib

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from kernel_testing import (
    DTYPES,
    L_BIAS,
    REFERENCE_CASES,
    ROW_CASES,
    assert_probs_match_reference,
    case_batch,
    kind_case,
    make_bias,
    make_logits,
    status_batch,
)
from tsdi_kernels.kernels import status


@contextlib.contextmanager
def stable_torch_sort():
    """TopPLogitsWarper calls torch.sort(stable=False), whose order of equal values is unspecified (on CPU it
    differs with the size and the data). Our documented tie order is the one a stable ascending sort gives
    (equal logits ranked by index descending); forcing stable=True makes HF's own code follow it."""
    original = torch.sort

    def sort(*args, **kwargs):
        kwargs["stable"] = True
        return original(*args, **kwargs)

    torch.sort = sort
    try:
        yield
    finally:
        torch.sort = original


def hf_probs(batch, *, stable=True):
    """The Hugging Face pipeline, one row at a time, with the warpers' own code (on CPU)."""
    logits, bias, positions, temperature, top_k, top_p, strength = batch.probs_args()
    out = []
    with stable_torch_sort() if stable else contextlib.nullcontext():
        for b in range(logits.shape[0]):
            z = logits[b: b + 1].float()
            if bias is not None and positions[b] < bias.shape[0]:
                z = z - strength * bias[positions[b]]
            if temperature[b] == 0:
                out.append(torch.nn.functional.one_hot(z.argmax(dim=1), z.shape[1]).float())
                continue
            z = TemperatureLogitsWarper(float(temperature[b]))(None, z)
            if top_k[b] > 0:
                z = TopKLogitsWarper(int(top_k[b]))(None, z)
            if top_p[b] < 1:
                z = TopPLogitsWarper(float(top_p[b]))(None, z)
            out.append(torch.softmax(z, dim=-1))
    return torch.cat(out)


def op_probs(op_backend, batch, logits=None):
    """torch.ops.tsdi.debias_probs on the backend's device (logits: already there, e.g. a strided view)."""
    args = list(op_backend.to(*batch.probs_args()))
    if logits is not None:
        args[0] = logits
    return torch.ops.tsdi.debias_probs(*args).cpu()


# --- against Hugging Face, through torch.ops -------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0], ids=lambda s: f"strength{s}")
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("vocab", [1000, 4099], ids=lambda v: f"V{v}")
def test_probs_match_hf(op_backend, vocab, dtype, strength):
    logits = make_logits(len(ROW_CASES), vocab, DTYPES[dtype], ties="top", neg_inf="band")
    batch = case_batch(logits, make_bias(L_BIAS, vocab), strength=strength)
    # Both sides compute the same fp32 softmax of the same fp32 values; 1e-6 leaves room for a different
    # summation order of the normaliser (a few ulp of probabilities <= 1).
    torch.testing.assert_close(op_probs(op_backend, batch), hf_probs(batch), atol=1e-6, rtol=0)


def test_probs_match_unpatched_hf_without_ties(op_backend):
    """Without ties the sort order is unique: compare against HF exactly as it ships."""
    batch = case_batch(make_logits(len(ROW_CASES), 3000, neg_inf="band"), make_bias(L_BIAS, 3000))
    torch.testing.assert_close(op_probs(op_backend, batch), hf_probs(batch, stable=False), atol=1e-6, rtol=0)


def test_probs_noncontiguous_rows(op_backend):
    """logits[:, -1, :] of a [B, S, V] tensor: row stride S * V; and a V-strided view that must be copied."""
    n, vocab = len(ROW_CASES), 777
    full = make_logits(n * 3, vocab, ties="top", neg_inf="band").reshape(n, 3, vocab)
    batch = case_batch(full[:, -1, :].contiguous(), make_bias(L_BIAS, vocab))
    rows = op_backend.to(full)[:, -1, :]
    assert not rows.is_contiguous()
    torch.testing.assert_close(op_probs(op_backend, batch, rows), hf_probs(batch), atol=1e-6, rtol=0)
    strided_v = torch.cat([rows, rows], dim=1)[:, ::2]  # stride 2 along V
    assert strided_v.stride(1) == 2
    batch_v = batch.replace(logits=strided_v.cpu().contiguous())
    torch.testing.assert_close(op_probs(op_backend, batch_v, strided_v), hf_probs(batch_v), atol=1e-6, rtol=0)


def test_probs_without_bias(op_backend):
    batch = case_batch(make_logits(len(ROW_CASES), 500, ties="top", neg_inf="band"), None)
    torch.testing.assert_close(op_probs(op_backend, batch), hf_probs(batch), atol=1e-6, rtol=0)


# --- the kernels against the reference -------------------------------------------------------------------------


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=str)
def test_probs_match_reference(cpp_kernel, case):
    assert_probs_match_reference(cpp_kernel, REFERENCE_CASES[case]())


def test_status_codes(probs_kernel):
    """The status code of each row; rows with bad data (NaN, no finite value) are evaluated on zeros, as the
    reference does. (What a row with out-of-range parameters holds besides its code is not specified.)"""
    batch, codes = status_batch()
    probs, got = probs_kernel.probs(batch)
    assert got.tolist() == codes, list(zip(batch.names, got.tolist(), codes))
    assert probs[4, 5] == 0 and probs[5, 123] == 1
    if probs_kernel.name != "reference":
        data_rows = [i for i, c in enumerate(codes) if c in (0, status.ERR_NAN, status.ERR_NO_FINITE)]
        assert_probs_match_reference(probs_kernel, batch.take(torch.tensor(data_rows)))


def test_thread_count_does_not_change_probs(cpp_kernel, num_threads):
    batch = kind_case("B3-V70000-fp32-vsplit")  # the vocabulary-split path
    num_threads(1)
    one = cpp_kernel.probs(batch)
    num_threads(2)
    two = cpp_kernel.probs(batch)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
