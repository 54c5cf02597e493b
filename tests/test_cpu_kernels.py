"""The C++ CPU kernels (tsdi_kernels._C, private ops tsdi::_cpu_*) against the pure-PyTorch reference.

Tokens must be identical to reference.debias_sample for the same seeds (both draw Gumbel-max with the same Philox
noise), probabilities equal to reference.debias_probs at atol 1e-6, running statistics equal to a float64 NumPy
computation. The Philox generator is compared with numbers produced by Triton's own tl.rand in the interpreter.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tsdi_kernels.kernels import library as ops
from tsdi_kernels.kernels import status as status_codes
from tsdi_kernels.kernels.accumulate import reference as acc_reference
from tsdi_kernels.kernels.sampling import philox, reference

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason=f"C++ extension not built: {ops.EXTENSION_ERROR}")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (temperature, top_k, top_p) of the rows of a mixed batch, cycled
ROW_KINDS = [
    (0.0, 0, 1.0),  # greedy
    (0.8, 20, 1.0),  # top-k only
    (1.0, 0, 0.8),  # top-p only
    (0.7, 50, 0.9),  # both
    (1.3, 0, 1.0),  # neither
    (0.5, 3, 0.5),  # tiny top-k and top-p
    (1.0, 10**9, 0.95),  # k > V (top-k disabled by clamping)
    (0.0, 5, 0.3),  # greedy ignores the filters
]


def row_params(batch, kinds=ROW_KINDS, seed=0):
    kinds = [kinds[i % len(kinds)] for i in range(batch)]
    g = torch.Generator().manual_seed(seed)
    return (
        torch.tensor([k[0] for k in kinds], dtype=torch.float32),
        torch.tensor([k[1] for k in kinds], dtype=torch.int64),
        torch.tensor([k[2] for k in kinds], dtype=torch.float32),
        torch.randint(-(2**62), 2**62, (batch,), generator=g, dtype=torch.int64),
    )


def make_logits(batch, vocab, dtype, *, scale=3.0, ties=False, neg_inf=False, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=g) * scale
    if ties:  # coarse values: many exact ties, also at the top-k / top-p boundaries
        x[::2] = torch.round(x[::2] * 2) / 2
    if neg_inf:  # masked tokens
        x[torch.rand(batch, vocab, generator=g) < 0.3] = float("-inf")
    x = x.to(dtype)
    if strided:  # rows of a [B, S, V] tensor: row stride S * V, unit stride on V
        big = torch.full((batch, 3, vocab), float("nan"), dtype=dtype)
        big[:, 1] = x
        x = big[:, 1]
        assert x.stride() == (3 * vocab, 1)
    return x


def sampling_case(batch, vocab, dtype, *, bias_rows=4, strength=1.0, **kw):
    logits = make_logits(batch, vocab, dtype, **kw)
    g = torch.Generator().manual_seed(1)
    bias = None if bias_rows is None else torch.randn(bias_rows, vocab, generator=g)
    positions = torch.arange(batch, dtype=torch.int64) % 7  # some past L
    temperature, top_k, top_p, seed = row_params(batch)
    return logits, bias, positions, temperature, top_k, top_p, seed, strength


def assert_same_tokens(args):
    got = ops.EXTENSION.debias_sample(*args)
    want = reference.debias_sample(*args)
    mismatch = (got != want).nonzero().flatten().tolist()
    assert not mismatch, f"rows {mismatch}: cpp {got[mismatch].tolist()} vs reference {want[mismatch].tolist()}"
    return got


def top_p_borderline_rows(logits, bias, positions, temperature, top_k, top_p, strength, tol=1e-6):
    """Rows where some token's mass ranked above it is within `tol` of top_p: there the keep decision depends on
    the rounding of the softmax sum (torch.softmax's summation order and exp versus ours), so the kept sets may
    differ by that token. Computed with the reference's own numbers."""
    scaled, keep, greedy, status, _ = reference._filtered(logits, bias, positions, temperature, top_k,
                                                          torch.ones_like(top_p), strength)
    asc_vals, _ = torch.sort(scaled.masked_fill(~keep, float("-inf")), dim=1, stable=True)
    probs = torch.softmax(asc_vals.flip(1), dim=1)
    mass_above = torch.cumsum(probs, dim=1) - probs
    near = ((mass_above - top_p[:, None]).abs() < tol).any(dim=1)
    return near & (top_p < 1) & ~greedy & (status == 0)


def assert_same_probs(args):
    probs_args = args[:6] + args[7:]
    got, status = ops.EXTENSION.debias_probs(*probs_args)
    want, want_status = reference.debias_probs(*probs_args)
    assert torch.equal(status, want_status)
    exact = ~top_p_borderline_rows(*probs_args)
    # rtol: torch.softmax itself is off by up to ~4e-6 relative on peaked fp32 rows (measured against float64:
    # p = 0.7425205 exactly, torch 0.7425233, ours 0.7425209), so large probabilities get a relative tolerance.
    torch.testing.assert_close(got[exact], want[exact], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(got.shape[0]), atol=1e-5, rtol=0)


CASES = {
    "B8-V4096-fp32": dict(batch=8, vocab=4096, dtype="fp32"),
    "B16-V4099-bf16": dict(batch=16, vocab=4099, dtype="bf16"),  # V not a multiple of the vector width
    "B16-V1001-fp16": dict(batch=16, vocab=1001, dtype="fp16"),
    "B16-V4096-fp32-ties": dict(batch=16, vocab=4096, dtype="fp32", ties=True),
    "B16-V4096-bf16-ties": dict(batch=16, vocab=4096, dtype="bf16", ties=True, scale=1.0),
    "B16-V3000-fp32-neginf": dict(batch=16, vocab=3000, dtype="fp32", neg_inf=True),
    "B8-V2048-fp32-strided": dict(batch=8, vocab=2048, dtype="fp32", strided=True),
    "B8-V2048-bf16-strided": dict(batch=8, vocab=2048, dtype="bf16", strided=True),
    "B8-V4096-fp32-nobias": dict(batch=8, vocab=4096, dtype="fp32", bias_rows=None),
    "B8-V4096-fp32-strength0": dict(batch=8, vocab=4096, dtype="fp32", strength=0.0),
    "B8-V4096-fp32-strength0.5": dict(batch=8, vocab=4096, dtype="fp32", strength=0.5),
    "B3-V70000-fp32-vsplit": dict(batch=3, vocab=70000, dtype="fp32"),  # 5 vocabulary chunks per row
    "B8-V40000-bf16-vsplit": dict(batch=8, vocab=40000, dtype="bf16", scale=6.0),
    "B8-V8-fp32-tinyV": dict(batch=8, vocab=8, dtype="fp32"),
    "B8-V1-fp32-oneV": dict(batch=8, vocab=1, dtype="fp32"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tokens_and_probs_match_reference(case):
    case = dict(case)
    dtype = DTYPES[case.pop("dtype")]
    args = sampling_case(case.pop("batch"), case.pop("vocab"), dtype, **case)
    assert_same_tokens(args)
    assert_same_probs(args)


@pytest.mark.parametrize("top_p", [0.99, 0.9, 0.5], ids=lambda p: f"topp{p}")
@pytest.mark.parametrize("vocab", [5000, 40000], ids=lambda v: f"V{v}")
def test_flat_distribution_takes_the_exact_path(vocab, top_p):
    """Almost uniform rows: the candidates' mass cannot reach top_p, so the bounded second pass runs."""
    batch = 4
    logits = make_logits(batch, vocab, torch.float32, scale=0.01)
    temperature = torch.ones(batch)
    top_k = torch.tensor([0, 0, 5000, 0])
    top_p_t = torch.full((batch,), top_p)
    seed = torch.arange(batch, dtype=torch.int64) * 7919
    args = (logits, None, torch.zeros(batch, dtype=torch.int64), temperature, top_k, top_p_t, seed, 1.0)
    assert_same_tokens(args)
    assert_same_probs(args)


def test_top_k_larger_than_finite_tokens():
    vocab = 3000
    logits = torch.full((4, vocab), float("-inf"))
    logits[:, ::300] = torch.randn(4, 10)  # 10 finite tokens
    temperature = torch.tensor([1.0, 0.7, 1.0, 0.0])
    top_k = torch.tensor([100, 11, 100, 100])
    top_p = torch.tensor([1.0, 0.9, 0.5, 1.0])
    args = (logits, None, torch.zeros(4, dtype=torch.int64), temperature, top_k, top_p, torch.arange(4), 1.0)
    tokens = assert_same_tokens(args)
    assert torch.isfinite(logits.gather(1, tokens[:, None])).all()
    assert_same_probs(args)


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_many_random_rows_agree(seed):
    """Agreement rate on random rows of every kind; expected to be exactly 100%."""
    batch, vocab = 256, 2000
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * torch.rand(batch, 1, generator=g) * 8
    temperature = torch.rand(batch, generator=g) * 1.5
    temperature[::5] = 0
    top_k = torch.randint(0, 200, (batch,), generator=g)
    top_k[::3] = 0
    top_p = torch.rand(batch, generator=g) * 0.99 + 0.01
    top_p[::4] = 1.0
    seeds = torch.randint(0, 2**62, (batch,), generator=g)
    positions = torch.randint(0, 10, (batch,), generator=g)
    bias = torch.randn(5, vocab, generator=g)
    assert_same_tokens((logits, bias, positions, temperature, top_k, top_p, seeds, 0.8))


def test_status_codes():
    vocab = 5000
    logits = torch.randn(6, vocab)
    logits[0, 17] = float("nan")
    logits[1] = float("-inf")
    logits[2, 3] = float("inf")
    logits[3, 3] = float("inf")
    logits[3, 9] = float("nan")  # NaN wins over +inf
    bias = torch.zeros(2, vocab)
    bias[0, 5] = float("inf")  # row 4 (position 0): logits - inf -> -inf at token 5 only: legal
    positions = torch.tensor([1, 1, 1, 1, 0, 1])
    temperature, top_k, top_p, seed = row_params(6)
    args = (logits, bias, positions, temperature, top_k, top_p, seed, 1.0)
    tokens = ops.EXTENSION.debias_sample(*args)
    assert tokens[:4].tolist() == [status_codes.ERR_NAN, status_codes.ERR_NO_FINITE, status_codes.ERR_NO_FINITE,
                                   status_codes.ERR_NAN]
    assert (tokens[4:] >= 0).all()
    assert torch.equal(tokens, reference.debias_sample(*args))
    _, status = ops.EXTENSION.debias_probs(*args[:6], 1.0)
    assert status.tolist() == [-1, -2, -2, -1, 0, 0]
    assert_same_probs(args)  # bad rows are evaluated on zeros, as the reference does


def test_public_op_uses_cpp_and_raises_on_nan():
    args = sampling_case(4, 1000, torch.float32)
    with ops.use_backend("cpu", "cpp"):
        assert torch.equal(torch.ops.tsdi.debias_sample(*args), reference.debias_sample(*args))
        bad = args[0].clone()
        bad[2, 5] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            torch.ops.tsdi.debias_sample(bad, *args[1:])


def test_deterministic_and_thread_independent():
    args = sampling_case(3, 70000, torch.float32)  # V-split path
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.EXTENSION.debias_sample(*args)
        one_probs = ops.EXTENSION.debias_probs(*args[:6], args[7])[0]
        torch.set_num_threads(2)
        two = ops.EXTENSION.debias_sample(*args)
        two_probs = ops.EXTENSION.debias_probs(*args[:6], args[7])[0]
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two) and torch.equal(one_probs, two_probs)
    assert torch.equal(ops.EXTENSION.debias_sample(*args), two)


def test_batch_invariance():
    args = sampling_case(8, 20000, torch.float32)
    full = ops.EXTENSION.debias_sample(*args)
    perm = torch.randperm(8)
    permuted = [a[perm] if isinstance(a, torch.Tensor) and a.dim() == 1 else a for a in args]
    permuted[0] = args[0][perm]
    assert torch.equal(ops.EXTENSION.debias_sample(*permuted), full[perm])
    single = [a[3:4] if isinstance(a, torch.Tensor) and a.dim() == 1 else a for a in args]
    single[0] = args[0][3:4]
    assert torch.equal(ops.EXTENSION.debias_sample(*single), full[3:4])


# --- Philox vs Triton ------------------------------------------------------------------------------------------

TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _rand_kernel(tok_ptr, out_ptr, seed, position, N: tl.constexpr):
        offs = tl.arange(0, N)
        tok = tl.load(tok_ptr + offs)
        offset = tok + (position.to(tl.int64) << 32)  # token + position * 2^32: the kernels' counter
        tl.store(out_ptr + offs, tl.rand(seed, offset))

    cases = json.loads(sys.argv[1])
    out = []
    for seed, position, tokens in cases:
        tok = torch.tensor(tokens, dtype=torch.int64)
        u = torch.empty(len(tokens), dtype=torch.float32)
        _rand_kernel[(1,)](tok, u, seed, position, N=len(tokens))
        out.append(u.view(torch.int32).tolist())
    print(json.dumps(out))
    """
)


def test_philox_matches_triton_interpreter(tmp_path):
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat([torch.arange(64), torch.randint(0, 2**31 - 1, (64,), generator=g)]).tolist()
    cases = [(0, 0, tokens), (12345, 3, tokens), (2**40 + 17, 2**20, tokens), (-987654321, 7, tokens),
             (2**62 + 5, 0, tokens)]
    script = tmp_path / "triton_rand.py"
    script.write_text(TRITON_SCRIPT)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script), json.dumps(cases)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = json.loads(proc.stdout.strip().splitlines()[-1])
    for (seed, position, toks), bits in zip(cases, expected):
        want = torch.tensor(bits, dtype=torch.int32).view(torch.float32)
        got = ops.EXTENSION.philox_uniform(torch.tensor([seed]), torch.tensor([position]), torch.tensor(toks))
        assert torch.equal(got, want), f"seed {seed} position {position}"
        assert torch.equal(got, philox.philox_uniform(torch.tensor(seed), torch.tensor(position),
                                                         torch.tensor(toks)))


# --- logit_mean_update ----------------------------------------------------------------------------------------


def numpy_stats(aligned, reference_, mask, normalize):
    d = aligned.double().numpy()
    if normalize:
        d = d - np.log(np.exp(d - d.max(-1, keepdims=True)).sum(-1, keepdims=True)) - d.max(-1, keepdims=True)
    if reference_ is not None:
        r = reference_.double().numpy()
        if normalize:
            r = r - np.log(np.exp(r - r.max(-1, keepdims=True)).sum(-1, keepdims=True)) - r.max(-1, keepdims=True)
        d = d - r
    m = np.ones(d.shape[:2], bool) if mask is None else mask.numpy()
    length, vocab = d.shape[1:]
    mean, m2, count = np.zeros((length, vocab)), np.zeros((length, vocab)), np.zeros(length, np.int64)
    for t in range(length):
        rows = d[m[:, t], t]
        count[t] = len(rows)
        if len(rows):
            mean[t] = rows.mean(0)
            m2[t] = ((rows - mean[t]) ** 2).sum(0)
    return mean, m2, count


MEAN_CASES = {
    "B12-L5-V1000-fp32-ref-norm": dict(B=12, L=5, V=1000, dtype="fp32", ref=True, mask=False, normalize=True),
    "B12-L5-V1000-fp32-ref-raw": dict(B=12, L=5, V=1000, dtype="fp32", ref=True, mask=False, normalize=False),
    "B12-L3-V777-bf16-ref-mask": dict(B=12, L=3, V=777, dtype="bf16", ref=True, mask=True, normalize=True),
    "B10-L9-V500-fp32-noref-mask": dict(B=10, L=9, V=500, dtype="fp32", ref=False, mask=True, normalize=True),
    "B10-L2-V20000-fp16-ref-raw": dict(B=10, L=2, V=20000, dtype="fp16", ref=True, mask=True, normalize=False),
}


@pytest.mark.parametrize("splits", [(1,), (4, 8), (3, 3, 3, 3)], ids=lambda s: "split" + "+".join(map(str, s)))
@pytest.mark.parametrize("case", MEAN_CASES.values(), ids=MEAN_CASES.keys())
def test_logit_mean_update_matches_numpy(case, splits):
    g = torch.Generator().manual_seed(0)
    B, L, V = case["B"], case["L"], case["V"]
    dtype = DTYPES[case["dtype"]]
    aligned = (torch.randn(B, L, V, generator=g) * 4).to(dtype)
    reference_ = (torch.randn(B, L, V, generator=g) * 4).to(dtype) if case["ref"] else None
    mask = torch.rand(B, L, generator=g) < 0.7 if case["mask"] else None
    if mask is not None:
        mask[:, 0] = False  # a position that never counts
        aligned[~mask] = float("nan")  # uncounted rows are never read as data
    mean, m2, count = torch.zeros(L, V), torch.zeros(L, V), torch.zeros(L, dtype=torch.int64)
    bounds = np.cumsum((0,) + tuple(splits))
    bounds = [int(b * B / bounds[-1]) for b in bounds]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        where = ops.EXTENSION.logit_mean_update(
            mean, m2, count, aligned[lo:hi].contiguous(),
            None if reference_ is None else reference_[lo:hi].contiguous(),
            None if mask is None else mask[lo:hi].contiguous(), case["normalize"])
        assert where.tolist() == [-1, -1]
    want_mean, want_m2, want_count = numpy_stats(aligned, reference_, mask, case["normalize"])
    np.testing.assert_array_equal(count.numpy(), want_count)
    np.testing.assert_allclose(mean.numpy(), want_mean, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(m2.numpy(), want_m2, atol=1e-3, rtol=1e-4)


def test_logit_mean_update_state_untouched_on_non_finite():
    g = torch.Generator().manual_seed(0)
    B, L, V = 6, 4, 300
    aligned, ref = torch.randn(B, L, V, generator=g), torch.randn(B, L, V, generator=g)
    mean, m2, count = torch.randn(L, V), torch.rand(L, V), torch.full((L,), 3, dtype=torch.int64)
    before = (mean.clone(), m2.clone(), count.clone())
    bad = aligned.clone()
    bad[4, 1, 7] = float("inf")
    bad[2, 3, 0] = float("nan")
    ref_bad = ref.clone()
    ref_bad[2, 2, 5] = float("-inf")
    for a, r, mask, want in [
        (bad, ref, None, [2, 3]),
        (bad, ref_bad, None, [2, 2]),
        (aligned, ref_bad, None, [2, 2]),
        (bad, ref, torch.tensor([[True] * L] * B).index_put_((torch.tensor([2]), torch.tensor([3])),
                                                            torch.tensor(False)), [4, 1]),
    ]:
        where = ops.EXTENSION.logit_mean_update(mean, m2, count, a, r, mask, True)
        assert where.tolist() == want
        assert where.tolist() == acc_reference.logit_mean_update(mean.clone(), m2.clone(), count.clone(), a, r, mask,
                                                             True).tolist()
        assert torch.equal(mean, before[0]) and torch.equal(m2, before[1]) and torch.equal(count, before[2])


def test_logit_mean_update_thread_independent():
    """L=4 runs the fused path with 1 thread and the (lse first, then V tiles) path with 2: same bits."""
    g = torch.Generator().manual_seed(0)
    aligned, ref = torch.randn(5, 4, 9000, generator=g), torch.randn(5, 4, 9000, generator=g).bfloat16()
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            state = (torch.zeros(4, 9000), torch.zeros(4, 9000), torch.zeros(4, dtype=torch.int64))
            for lo in (0, 2):
                ops.EXTENSION.logit_mean_update(*state, aligned[lo:lo + 3].contiguous(),
                                                      ref[lo:lo + 3].contiguous(), None, True)
            results.append(state)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)
