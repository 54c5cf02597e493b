"""min_p in debias_sample / debias_probs: HF's MinPLogitsWarper (after temperature, top-k and top-p), per row.

The rule (semantics.py): keep z - z_max >= fl32(log(min_p) * (1 + 2**-18)); 0 disables. Checked against HF's warper
itself, on HF's and vLLM's own test cases, on every backend (tokens bit for bit against the reference, the
distribution at fp32 tolerance), with its validation, opcheck and torch.compile."""
import math

import pytest
import torch
from kernel_testing import REFERENCE, Batch, assert_probs_match_reference, assert_tokens_match_reference, \
    mixed_batch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

import tsdi_kernels
from tsdi_kernels.kernels.sampling import reference


def _hf_probs(logits, temperature, top_k, top_p, min_p):
    """HF's warpers in HF's order (GenerationMixin._get_logits_processor), then softmax."""
    procs = [TemperatureLogitsWarper(temperature)]
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        procs.append(TopPLogitsWarper(top_p))
    procs.append(MinPLogitsWarper(min_p))
    return torch.softmax(LogitsProcessorList(procs)(None, logits.clone()), dim=-1)


def test_hf_min_p_dist_warper_case(op_backend):
    """transformers' tests/generation/test_logits_process.py::test_min_p_dist_warper, restated: min_p = 0.05 keeps
    0.9 and 0.047 (> 0.045) of the first row, every token of the second (no dominant one), the top of the third."""
    dist = torch.log(torch.tensor([[0.9, 0.0274, 0.047, 0.0274], [0.15, 0.3, 0.3, 0.25], [0.97, 0.01, 0.01, 0.01]]))
    probs = tsdi_kernels.debias_probs(op_backend.to(dist), min_p=0.05).cpu()
    expected_support = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(probs > 0, expected_support)
    # the kept tokens renormalised, as softmax of HF's filtered scores
    torch.testing.assert_close(probs, _hf_probs(dist, 1.0, 0, 1.0, 0.05), atol=1e-6, rtol=0)
    tokens = tsdi_kernels.debias_sample(op_backend.to(dist), min_p=0.05, seed=torch.arange(3)).cpu()
    assert expected_support[torch.arange(3), tokens].all()


@pytest.mark.parametrize("batch_size", [1, 2, 32])
@pytest.mark.parametrize("min_p", [0.0, 0.1])
def test_vllm_sampler_min_p_case(op_backend, batch_size, min_p):
    """vLLM's tests/v1/sample/test_sampler.py::test_sampler_min_p, restated: one dominant token (logit 10, the rest
    0.01) survives min_p = 0.1 alone; min_p = 0 keeps every token."""
    vocab = 1024
    logits = torch.full((batch_size, vocab), 1e-2)
    logits[:, 0] = 10.0
    probs = tsdi_kernels.debias_probs(op_backend.to(logits), min_p=min_p).cpu()
    kept = probs > 0
    assert kept[:, 0].all()
    assert (kept[:, 1:].all() if min_p == 0 else not kept[:, 1:].any())
    tokens = tsdi_kernels.debias_sample(op_backend.to(logits), min_p=min_p, seed=torch.arange(batch_size)).cpu()
    assert kept[torch.arange(batch_size), tokens].all()


@pytest.mark.parametrize("params", [(1.0, 0, 1.0, 0.1), (0.7, 0, 1.0, 0.02), (0.7, 50, 1.0, 0.2),
                                    (0.7, 0, 0.9, 0.05), (1.3, 20, 0.8, 0.3), (0.5, 0, 0.95, 1.0),
                                    (1.0, 0, 1.0, 1e-9)],
                         ids=["T1-minp0.1", "T0.7-minp0.02", "k50-minp0.2", "p0.9-minp0.05", "k20-p0.8-minp0.3",
                              "p0.95-minp1", "minp1e-9"])
def test_probs_equal_hf_warpers(probs_kernel, params):
    """The exact distribution (reference and C++ debias_probs) equals HF's Temperature, TopK, TopP, MinP warpers
    and softmax, on rows of a real-looking spread (randn * 3) over V = 5000."""
    temperature, top_k, top_p, min_p = params
    logits = torch.randn(6, 5000, generator=torch.Generator().manual_seed(3)) * 3
    batch = Batch(logits, None, torch.zeros(6, dtype=torch.int64), torch.full((6,), temperature),
                  torch.full((6,), top_k), torch.full((6,), top_p), torch.arange(6), min_p=torch.full((6,), min_p))
    probs, codes = probs_kernel.probs(batch)
    assert (codes == 0).all()
    # fp32 softmax of the same kept scores: sums in another order (see assert_probs_match_reference)
    torch.testing.assert_close(probs, _hf_probs(logits, temperature, top_k, top_p, min_p), atol=1e-6, rtol=1e-5)


def _min_p_batch(vocab, gen_seed=1):
    """mixed_batch's row kinds (greedy, top-k, top-p, both, neither, ties, -inf, flat, wide) with min-p on most
    rows, off on some, 1 (the top token and its ties) on one."""
    batch = mixed_batch(vocab, gen_seed=gen_seed)
    min_p = torch.tensor([0.1, 0.05, 0.0, 0.2, 0.01, 0.3, 1.0, 0.02, 0.5, 0.001, 0.0, 0.05, 0.15])[:batch.rows]
    return batch.replace(min_p=min_p)


def test_tokens_match_reference(kernel):
    """Every kernel draws the reference's tokens (the shared Philox noise), row kinds mixed."""
    vocab = 900 if kernel.interpreted else 5000
    assert_tokens_match_reference(kernel, _min_p_batch(vocab))


def test_min_p_only_rows_on_every_path(compiled_kernel):
    """Rows with min-p alone: a peaked row (few candidates), a flat one (min-p keeps most of the vocabulary: the
    candidate buffers overflow, so the bounded second pass / Triton's fallback decides), and thresholds near 0."""
    vocab = 900 if compiled_kernel.interpreted else 40000
    gen = torch.Generator().manual_seed(5)
    logits = torch.cat([torch.randn(3, vocab, generator=gen) * 3, torch.randn(3, vocab, generator=gen) * 0.02])
    min_p = torch.tensor([0.1, 1e-4, 0.9, 0.5, 0.99, 0.999])
    batch = Batch(logits, None, torch.zeros(6, dtype=torch.int64), torch.ones(6), torch.zeros(6, dtype=torch.int64),
                  torch.ones(6), torch.arange(6) * 7919, min_p=min_p)
    assert_tokens_match_reference(compiled_kernel, batch)


def test_probs_match_reference(probs_kernel):
    assert_probs_match_reference(probs_kernel, _min_p_batch(5000, gen_seed=2))


def test_exact_boundary_is_kept(kernel):
    """Probabilities [2/3, 1/3] at min_p = 0.5: the second equals min_p times the top one. HF's exact rule keeps it
    (it removes p < min_p * p_max); every backend keeps it (semantics.py: the threshold's 2**-18 widening)."""
    logits = torch.log(torch.tensor([[2 / 3, 1 / 3, 1e-9, 1e-9]])).repeat(64, 1)
    batch = Batch(logits, None, torch.zeros(64, dtype=torch.int64), torch.ones(64),
                  torch.zeros(64, dtype=torch.int64), torch.ones(64), torch.arange(64), min_p=torch.full((64,), 0.5))
    tokens = kernel.sample(batch)
    assert set(tokens.tolist()) == {0, 1}  # 64 draws of a 2 / 3 : 1 / 3 choice: both appear (1 - 2 ** -37)
    probs, _ = REFERENCE.probs(batch.take(slice(0, 1)))
    torch.testing.assert_close(probs[0, :2], torch.tensor([2 / 3, 1 / 3]), atol=1e-6, rtol=0)


def test_threshold_is_log_min_p_widened():
    min_p = torch.tensor([0.0, 1e-6, 0.05, 0.5, 1.0])
    want = [-math.inf] + [math.log(q) * (1 + 2 ** -18) for q in (1e-6, 0.05, 0.5)] + [0.0]
    assert reference.min_p_threshold(min_p).tolist() == pytest.approx(want, rel=1e-7)


def test_frequencies_match_the_distribution(probs_kernel):
    """Tier 3: 40000 draws (one seed per row) of a 12-token row at min_p = 0.1 against debias_probs: total
    variation below 0.01 (its standard deviation at 40000 draws over 12 outcomes is about 0.004)."""
    draws = 40000
    row = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0, 2.9, 1.7, -5.0, 0.2])
    batch = Batch(row.repeat(draws, 1), None, torch.zeros(draws, dtype=torch.int64), torch.full((draws,), 0.8),
                  torch.zeros(draws, dtype=torch.int64), torch.ones(draws), torch.arange(draws),
                  min_p=torch.full((draws,), 0.1))
    sample_kernel = REFERENCE if probs_kernel.name == "reference" else probs_kernel
    freq = torch.bincount(sample_kernel.sample(batch), minlength=12).double() / draws
    probs, _ = probs_kernel.probs(batch.take(slice(0, 1)))
    assert (freq[probs[0] == 0] == 0).all()  # tier 2: never outside the support
    assert 0.5 * (freq - probs[0].double()).abs().sum() < 0.01


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_min_p_is_named(op_backend, bad):
    logits = op_backend.to(torch.randn(3, 50))
    min_p = op_backend.to(torch.tensor([0.1, bad, 0.0]))
    for call in (lambda: tsdi_kernels.debias_sample(logits, min_p=min_p, seed=0),
                 lambda: tsdi_kernels.debias_probs(logits, min_p=min_p)):
        with pytest.raises(ValueError, match=r"`min_p` must be in \[0, 1\].*row 1"):
            out = call()
            tsdi_kernels.check_tokens(out) if out.dim() == 1 else None  # CUDA: codes at the caller's sync


@pytest.mark.parametrize("min_p, match", [
    (torch.zeros(2), r"`min_p` must be a scalar or a tensor of shape \[B\] = \[3\]"),
    (torch.zeros(3, dtype=torch.float64), "`min_p` must have dtype"),
    ("0.1", "`min_p` must be a number or a tensor"),
])
def test_min_p_argument_checks(min_p, match):
    logits = torch.randn(3, 50)
    with pytest.raises(ValueError, match=match):
        if isinstance(min_p, torch.Tensor) and min_p.dtype == torch.float64:  # the op itself checks the dtype
            torch.ops.tsdi.debias_sample(logits, None, torch.zeros(3, dtype=torch.int64), torch.ones(3),
                                         torch.zeros(3, dtype=torch.int64), torch.ones(3),
                                         torch.zeros(3, dtype=torch.int64), 1.0, min_p)
        else:
            tsdi_kernels.debias_sample(logits, min_p=min_p)


def test_default_is_off_and_backward_compatible():
    """Calls without min_p (Python API and the op's positional schema of before) give the same tokens as min_p=0."""
    logits = torch.randn(4, 300)
    args = (logits, None, torch.zeros(4, dtype=torch.int64), torch.ones(4), torch.zeros(4, dtype=torch.int64),
            torch.full((4,), 0.9), torch.arange(4))
    old = torch.ops.tsdi.debias_sample(*args, 1.0)
    assert torch.equal(old, torch.ops.tsdi.debias_sample(*args, 1.0, torch.zeros(4)))
    assert torch.equal(old, tsdi_kernels.debias_sample(logits, top_p=0.9, seed=torch.arange(4), min_p=0.0))


def test_opcheck_and_compile(op_backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    logits, bias = op_backend.to(torch.randn(4, 300, generator=gen), torch.randn(3, 300, generator=gen))
    rows = op_backend.to(torch.tensor([0, 1, 2, 5]), torch.tensor([0.0, 0.7, 1.0, 1.3]), torch.tensor([0, 20, 0, 5]),
                         torch.tensor([1.0, 0.9, 1.0, 0.8]), torch.arange(4), torch.tensor([0.1, 0.0, 0.3, 0.05]))
    positions, temperature, top_k, top_p, seed, min_p = rows
    torch.library.opcheck(torch.ops.tsdi.debias_sample.default,
                          (logits, bias, positions, temperature, top_k, top_p, seed, 0.5, min_p))
    torch.library.opcheck(torch.ops.tsdi.debias_probs.default,
                          (logits, bias, positions, temperature, top_k, top_p, 1.0, min_p))

    def step(logits):
        tokens = tsdi_kernels.debias_sample(logits * 1.0, bias, positions=positions, temperature=temperature,
                                            top_k=top_k, top_p=top_p, seed=seed, min_p=min_p)
        probs = tsdi_kernels.debias_probs(logits, bias, positions=positions, temperature=temperature, top_k=top_k,
                                          top_p=top_p, min_p=min_p)
        return tokens, probs

    eager = step(logits)
    compiled = torch.compile(step, fullgraph=True)(logits)
    assert torch.equal(eager[0], compiled[0])
    torch.testing.assert_close(eager[1], compiled[1], atol=0, rtol=0)
