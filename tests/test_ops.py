"""torch.ops.tsdi on CPU against Hugging Face's own warpers, for every CPU backend (C++ kernels when built, and
the pure-PyTorch reference): exact probabilities, support, frequencies, determinism, batch invariance, running
statistics against float64 NumPy, bad inputs, opcheck and torch.compile."""
import contextlib

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import tsdi_kernels
from tsdi_kernels.kernels import library as ops

CPU_BACKENDS = ["reference"] + (["cpp"] if ops.HAS_EXTENSION else [])


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    with ops.use_backend("cpu", request.param):
        yield request.param


# --- inputs ---------------------------------------------------------------------------------------------------

# One row per case: (temperature, top_k, top_p, position). Mixes greedy, top-k only, top-p only, both, neither,
# positions past L (bias must not apply) and k larger than V.
ROW_CASES = [
    (0.0, 0, 1.0, 0),  # greedy
    (1.0, 0, 1.0, 1),  # neither filter
    (0.7, 50, 1.0, 2),  # top-k only
    (0.7, 0, 0.9, 3),  # top-p only
    (0.7, 50, 0.9, 0),  # both
    (1.3, 5, 0.5, 7),  # both, position past L
    (0.5, 0, 0.3, 9),  # top-p only, position past L
    (1.0, 100000, 1.0, 1),  # k > V: keeps everything
]
L_BIAS = 4


def make_logits(batch, vocab, dtype, *, seed=0, ties=True, neg_inf=True, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=g) * scale
    if ties:
        # exact ties at the top of the distribution, where top-k and top-p cut
        x[:, 10:14] = x.max(dim=1, keepdim=True).values
        x[:, 20:23] = x[:, 30:31]
    if neg_inf:
        x[:, 40:60] = float("-inf")  # masked tokens are legal
    return x.to(dtype)


def make_bias(vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L_BIAS, vocab, generator=g)


def row_params(cases=ROW_CASES):
    t, k, p, pos = zip(*cases)
    return (
        torch.tensor(pos, dtype=torch.int64),
        torch.tensor(t, dtype=torch.float32),
        torch.tensor(k, dtype=torch.int64),
        torch.tensor(p, dtype=torch.float32),
    )


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


def hf_probs(logits, bias, positions, temperature, top_k, top_p, strength):
    """The Hugging Face pipeline, one row at a time, with the warpers' own code."""
    out = []
    for b in range(logits.shape[0]):
        z = logits[b : b + 1].float()
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


# --- tier 1: exact probabilities ------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0], ids=lambda s: f"strength{s}")
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("vocab", [1000, 4099], ids=lambda v: f"V{v}")
def test_probs_match_hf(backend, vocab, dtype, strength):
    logits = make_logits(len(ROW_CASES), vocab, DTYPES[dtype])
    bias = make_bias(vocab)
    positions, temperature, top_k, top_p = row_params()
    got = torch.ops.tsdi.debias_probs(logits, bias, positions, temperature, top_k, top_p, strength)
    with stable_torch_sort():
        want = hf_probs(logits, bias, positions, temperature, top_k, top_p, strength)
    # Both sides compute the same fp32 softmax of the same fp32 values; 1e-6 leaves room for a different
    # summation order of the normaliser (a few ulp of probabilities <= 1).
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_probs_match_unpatched_hf_without_ties(backend):
    """Without ties the sort order is unique: compare against HF exactly as it ships."""
    logits = make_logits(len(ROW_CASES), 3000, torch.float32, ties=False)
    bias = make_bias(3000)
    args = row_params()
    got = torch.ops.tsdi.debias_probs(logits, bias, *args, 1.0)
    torch.testing.assert_close(got, hf_probs(logits, bias, *args, 1.0), atol=1e-6, rtol=0)


def test_probs_noncontiguous_rows(backend):
    """logits[:, -1, :] of a [B, S, V] tensor: row stride S * V; and a V-strided view that must be copied."""
    full = make_logits(len(ROW_CASES) * 3, 777, torch.float32).reshape(len(ROW_CASES), 3, 777)
    rows = full[:, -1, :]
    assert not rows.is_contiguous()
    bias = make_bias(777)
    args = row_params()
    with stable_torch_sort():
        want = hf_probs(rows.contiguous(), bias, *args, 1.0)
    torch.testing.assert_close(torch.ops.tsdi.debias_probs(rows, bias, *args, 1.0), want, atol=1e-6, rtol=0)
    strided_v = torch.cat([rows, rows], dim=1)[:, ::2]  # stride 2 along V
    with stable_torch_sort():
        want_v = hf_probs(strided_v.contiguous(), bias, *args, 1.0)
    torch.testing.assert_close(torch.ops.tsdi.debias_probs(strided_v, bias, *args, 1.0), want_v, atol=1e-6, rtol=0)


def test_probs_without_bias(backend):
    logits = make_logits(len(ROW_CASES), 500, torch.float32)
    args = row_params()
    with stable_torch_sort():
        want = hf_probs(logits, None, *args, 1.0)
    torch.testing.assert_close(torch.ops.tsdi.debias_probs(logits, None, *args, 1.0), want, atol=1e-6, rtol=0)


def test_greedy_ties_lowest_index(backend):
    logits = torch.zeros(2, 64)
    logits[0, [5, 9, 33]] = 2.0
    logits[1, [63, 7]] = 1.5
    tokens = tsdi_kernels.debias_sample(logits, temperature=0.0)
    assert tokens.tolist() == [5, 7]


# --- tier 2 and 3: support and frequencies --------------------------------------------------------------------


def _sample_many(logits, bias, positions, temperature, top_k, top_p, draws):
    """Draw `draws` tokens per row: replicate the batch, one seed per replica (noise is keyed by seed)."""
    batch = logits.shape[0]
    rep = lambda t: t.repeat(draws) if t.dim() == 1 else t.repeat(draws, 1)  # noqa: E731
    seeds = torch.arange(draws, dtype=torch.int64).repeat_interleave(batch) * 7919 + 13
    tokens = torch.ops.tsdi.debias_sample(
        rep(logits), bias, rep(positions), rep(temperature), rep(top_k), rep(top_p), seeds, 1.0
    )
    return tokens.reshape(draws, batch)


def test_samples_in_support_and_frequencies(backend):
    """Tier 2: every token lies in the kept set. Tier 3: chi-square of 200k draws per row against the exact
    probabilities. The kept sets are small here (top-k / top-p), so each row has few categories."""
    vocab = 256
    cases = [(0.7, 50, 1.0, 0), (0.7, 0, 0.9, 1), (1.0, 20, 0.8, 2), (0.5, 0, 1.0, 5), (0.0, 0, 1.0, 0)]
    logits = make_logits(len(cases), vocab, torch.float32, scale=1.5)
    bias = make_bias(vocab)
    args = row_params(cases)
    probs = torch.ops.tsdi.debias_probs(logits, bias, *args, 1.0)
    # The reference computes full-vocabulary Philox noise per draw with int64 torch ops (~0.5 us per token), so
    # it gets fewer draws; the C++ kernel draws noise for kept tokens only and gets the full 200k.
    draws = 200_000 if backend == "cpp" else 8_000
    tokens = _sample_many(logits, bias, *args, draws)
    for b in range(len(cases)):
        kept = probs[b] > 0
        assert kept[tokens[:, b]].all(), f"row {b}: a token outside the kept set"
        counts = torch.bincount(tokens[:, b], minlength=vocab).double()
        expected = probs[b].double() * draws
        mask = expected > 0
        if mask.sum() == 1:  # greedy row: all draws are the argmax
            assert counts[mask].item() == draws
            continue
        chi2 = (((counts - expected) ** 2)[mask] / expected[mask]).sum().item()
        dof = int(mask.sum()) - 1
        # Wilson-Hilferty: chi2/dof is ~ N(1, 2/dof); 6 standard deviations is a false-alarm rate of ~1e-9,
        # while a wrong kept set or a wrong temperature moves chi2/dof far beyond it with this many draws.
        bound = dof + 6 * (2 * dof) ** 0.5
        assert chi2 < bound, f"row {b}: chi2 {chi2:.1f} >= {bound:.1f} (dof {dof})"


def test_deterministic_and_batch_invariant(backend):
    logits = make_logits(len(ROW_CASES), 2048, torch.float32)
    bias = make_bias(2048)
    positions, temperature, top_k, top_p = row_params()
    seed = torch.arange(len(ROW_CASES), dtype=torch.int64) * 1000 + 3
    args = (logits, bias, positions, temperature, top_k, top_p, seed, 1.0)
    first = torch.ops.tsdi.debias_sample(*args)
    assert torch.equal(first, torch.ops.tsdi.debias_sample(*args))
    perm = torch.randperm(len(ROW_CASES), generator=torch.Generator().manual_seed(0))
    permuted = torch.ops.tsdi.debias_sample(
        logits[perm], bias, positions[perm], temperature[perm], top_k[perm], top_p[perm], seed[perm], 1.0
    )
    assert torch.equal(permuted, first[perm])
    for b in range(len(ROW_CASES)):  # each row alone gives the same token as inside the batch
        sl = slice(b, b + 1)
        alone = torch.ops.tsdi.debias_sample(
            logits[sl], bias, positions[sl], temperature[sl], top_k[sl], top_p[sl], seed[sl], 1.0
        )
        assert alone.item() == first[b].item()


def test_seed_and_position_change_the_draw(backend):
    logits = torch.zeros(1, 1000)
    draws = {
        tsdi_kernels.debias_sample(logits, seed=s, positions=p).item() for s in range(8) for p in range(8)
    }
    # 64 draws from a uniform over 1000 tokens: all-equal would mean the noise ignores seed and position.
    assert len(draws) > 32


# --- running statistics ---------------------------------------------------------------------------------------


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("normalize", [True, False], ids=["logprob", "raw"])
@pytest.mark.parametrize("with_reference", [True, False], ids=["ref", "noref"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"], ids=str)
def test_logit_mean_update_matches_float64(backend, normalize, with_reference, with_mask, dtype):
    B, L, V = 23, 5, 333
    g = torch.Generator().manual_seed(7)
    aligned = (torch.randn(B, L, V, generator=g) * 2 + 0.5).to(DTYPES[dtype])
    reference_ = (torch.randn(B, L, V, generator=g) * 2).to(DTYPES[dtype]) if with_reference else None
    mask = torch.rand(B, L, generator=g) < 0.7 if with_mask else None

    d = aligned.double().numpy()
    if normalize:
        d = _np_log_softmax(d)
    if with_reference:
        r = reference_.double().numpy()
        d = d - (_np_log_softmax(r) if normalize else r)
    w = np.ones((B, L), bool) if mask is None else mask.numpy()
    want_count = w.sum(0)
    want_mean = np.stack([d[w[:, t], t].mean(0) for t in range(L)])
    want_m2 = np.stack([((d[w[:, t], t] - want_mean[t]) ** 2).sum(0) for t in range(L)])

    for splits in ([B], [1] * 3 + [B - 3], [7, 7, 9], [11, 12]):
        acc = tsdi_kernels.BiasTable.empty(L, V, normalize=normalize)
        start = 0
        for n in splits:
            sl = slice(start, start + n)
            acc.update(aligned[sl], None if reference_ is None else reference_[sl], None if mask is None else mask[sl])
            start += n
        assert acc.count.tolist() == want_count.tolist()
        # fp32 accumulation of values of magnitude <= ~15 over <= 23 rows: the error of mean is a few ulp of 15
        # (~1e-5 absolute); M2 sums squares up to ~23 * 100, so a relative bound of 1e-5 applies there.
        np.testing.assert_allclose(acc.mean.numpy(), want_mean, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(acc.m2.numpy(), want_m2, atol=1e-3, rtol=1e-4)


def test_logit_mean_update_rejects_nonfinite_and_keeps_state(backend):
    acc = tsdi_kernels.BiasTable.empty(3, 50)
    acc.update(torch.randn(4, 3, 50), torch.randn(4, 3, 50))
    before = [t.clone() for t in (acc.mean, acc.m2, acc.count)]
    bad = torch.randn(4, 3, 50)
    bad[2, 1, 7] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*batch row 2, position 1"):
        acc.update(bad, torch.randn(4, 3, 50))
    for old, new in zip(before, (acc.mean, acc.m2, acc.count)):
        assert torch.equal(old, new)
    # a non-finite value in a row the mask excludes does not count
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 1] = False
    acc.update(bad, torch.randn(4, 3, 50), mask)
    assert acc.count.tolist() == [8, 7, 8]


def test_accumulator_stderr_and_merge():
    g = torch.Generator().manual_seed(3)
    a, r = torch.randn(40, 2, 30, generator=g), torch.randn(40, 2, 30, generator=g)
    whole = tsdi_kernels.BiasTable.empty(2, 30)
    whole.update(a, r)
    left, right = tsdi_kernels.BiasTable.empty(2, 30), tsdi_kernels.BiasTable.empty(2, 30)
    left.update(a[:15], r[:15])
    right.update(a[15:], r[15:])
    left.merge(right)
    torch.testing.assert_close(left.mean, whole.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left.m2, whole.m2, atol=1e-4, rtol=1e-5)
    d = torch.log_softmax(a.double(), -1) - torch.log_softmax(r.double(), -1)
    want = d.std(dim=0) / 40**0.5
    torch.testing.assert_close(whole.stderr.double(), want, atol=1e-5, rtol=1e-4)


# --- bad input ------------------------------------------------------------------------------------------------


def _good_args(batch=3, vocab=100):
    return dict(
        logits=torch.randn(batch, vocab),
        bias=torch.randn(4, vocab),
        positions=torch.zeros(batch, dtype=torch.int64),
        temperature=torch.ones(batch),
        top_k=torch.zeros(batch, dtype=torch.int64),
        top_p=torch.ones(batch),
        seed=torch.zeros(batch, dtype=torch.int64),
    )


def _nan_logits():
    x = torch.randn(3, 100)
    x[1, 5] = float("nan")
    return x


def _all_neginf_logits():
    x = torch.randn(3, 100)
    x[2] = float("-inf")
    return x


def _posinf_logits():
    x = torch.randn(3, 100)
    x[0, 3] = float("inf")
    return x


BAD_SAMPLING_INPUTS = {
    "top_p-zero": ("top_p", torch.tensor([0.9, 0.0, 1.0]), "top_p"),
    "top_p-above-one": ("top_p", torch.tensor([1.5, 0.5, 1.0]), "top_p"),
    "top_p-nan": ("top_p", torch.tensor([float("nan"), 0.5, 1.0]), "top_p"),
    "temperature-negative": ("temperature", torch.tensor([1.0, -0.1, 1.0]), "temperature"),
    "temperature-nan": ("temperature", torch.tensor([1.0, float("nan"), 1.0]), "temperature"),
    "top_k-negative": ("top_k", torch.tensor([0, -1, 5]), "top_k"),
    "top_k-float": ("top_k", torch.tensor([0.0, 1.0, 5.0]), "top_k"),
    "positions-negative": ("positions", torch.tensor([0, -2, 0]), "positions"),
    "positions-shape": ("positions", torch.zeros(4, dtype=torch.int64), "positions"),
    "seed-dtype": ("seed", torch.zeros(3, dtype=torch.int32), "seed"),
    "bias-vocab-mismatch": ("bias", torch.randn(4, 99), "bias"),
    "bias-dtype": ("bias", torch.randn(4, 100, dtype=torch.float64), "bias"),
    "bias-1d": ("bias", torch.randn(100), "bias"),
    "logits-int": ("logits", torch.zeros(3, 100, dtype=torch.int64), "logits"),
    "logits-3d": ("logits", torch.randn(3, 1, 100), "logits"),
    "logits-nan": ("logits", _nan_logits(), "NaN"),
    "logits-all-neginf": ("logits", _all_neginf_logits(), "no finite value"),
    "logits-posinf": ("logits", _posinf_logits(), r"\+inf"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLING_INPUTS), ids=str)
def test_bad_sampling_input_names_argument(backend, case):
    name, value, pattern = BAD_SAMPLING_INPUTS[case]
    args = _good_args()
    args[name] = value
    with pytest.raises((ValueError, RuntimeError), match=pattern):
        torch.ops.tsdi.debias_sample(*args.values(), 1.0)
    probs_args = {k: v for k, v in args.items() if k != "seed"}
    if name != "seed":
        with pytest.raises((ValueError, RuntimeError), match=pattern):
            torch.ops.tsdi.debias_probs(*probs_args.values(), 1.0)


def test_bad_strength_and_nan_bias(backend):
    args = _good_args()
    with pytest.raises(ValueError, match="strength"):
        torch.ops.tsdi.debias_sample(*args.values(), float("nan"))
    args["bias"][0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        torch.ops.tsdi.debias_sample(*args.values(), 1.0)


def test_neginf_logits_are_legal(backend):
    x = torch.randn(3, 100)
    x[:, :90] = float("-inf")
    tokens = tsdi_kernels.debias_sample(x, top_k=5, seed=torch.tensor([1, 2, 3]))
    assert (tokens >= 90).all()


def test_api_bad_scalars():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="top_k"):
        tsdi_kernels.debias_sample(x, top_k=2.5)
    with pytest.raises(ValueError, match="temperature"):
        tsdi_kernels.debias_sample(x, temperature=torch.ones(3))
    with pytest.raises(ValueError, match="logits"):
        tsdi_kernels.debias_sample(torch.randn(10))
    with pytest.raises(ValueError, match="`length`"):
        tsdi_kernels.BiasTable.empty(0, 10)


BAD_ACCUMULATOR_INPUTS = {
    "reference-shape": ("reference", lambda: torch.randn(2, 3, 11), "reference"),
    "aligned-dtype": ("aligned", lambda: torch.zeros(2, 3, 10, dtype=torch.int32), "aligned"),
    "aligned-2d": ("aligned", lambda: torch.randn(3, 10), "aligned"),
    "mask-dtype": ("mask", lambda: torch.ones(2, 3), "mask"),
    "mask-shape": ("mask", lambda: torch.ones(2, 4, dtype=torch.bool), "mask"),
    "mean-shape": ("mean", lambda: torch.zeros(3, 11), "mean"),
    "m2-dtype": ("m2", lambda: torch.zeros(3, 10, dtype=torch.float64), "m2"),
    "count-dtype": ("count", lambda: torch.zeros(3, dtype=torch.int32), "count"),
    "mean-noncontiguous": ("mean", lambda: torch.zeros(10, 3).t(), "mean"),
}


@pytest.mark.parametrize("case", list(BAD_ACCUMULATOR_INPUTS), ids=str)
def test_bad_accumulator_input_names_argument(backend, case):
    name, make, pattern = BAD_ACCUMULATOR_INPUTS[case]
    args = dict(
        mean=torch.zeros(3, 10),
        m2=torch.zeros(3, 10),
        count=torch.zeros(3, dtype=torch.int64),
        aligned=torch.randn(2, 3, 10),
        reference=torch.randn(2, 3, 10),
        mask=None,
    )
    args[name] = make()
    with pytest.raises((ValueError, RuntimeError), match=pattern):
        torch.ops.tsdi.logit_mean_update(*args.values(), True)


def test_backend_switch_validates():
    with pytest.raises(ValueError, match="backend"):
        with ops.use_backend("cpu", "triton"):
            pass
    info = tsdi_kernels.backends()
    assert set(info) == {"debias_sample", "debias_probs", "logit_mean_update"}
    assert info["debias_sample"]["cpu"] in ("cpp", "reference")


# --- opcheck and torch.compile --------------------------------------------------------------------------------


def _opcheck_samples():
    logits = make_logits(len(ROW_CASES), 300, torch.float32)
    bias = make_bias(300)
    positions, temperature, top_k, top_p = row_params()
    seed = torch.arange(len(ROW_CASES), dtype=torch.int64)
    return logits, bias, positions, temperature, top_k, top_p, seed


def test_opcheck(backend):
    logits, bias, positions, temperature, top_k, top_p, seed = _opcheck_samples()
    torch.library.opcheck(torch.ops.tsdi.debias_sample.default,
                          (logits, bias, positions, temperature, top_k, top_p, seed, 0.5))
    torch.library.opcheck(torch.ops.tsdi.debias_sample.default,
                          (logits.bfloat16(), None, positions, temperature, top_k, top_p, seed))
    torch.library.opcheck(torch.ops.tsdi.debias_probs.default,
                          (logits, bias, positions, temperature, top_k, top_p, 1.0))
    aligned, ref = torch.randn(4, 3, 300), torch.randn(4, 3, 300)
    mask = torch.rand(4, 3) < 0.5
    for normalize in (True, False):
        state = (torch.zeros(3, 300), torch.zeros(3, 300), torch.zeros(3, dtype=torch.int64))
        torch.library.opcheck(torch.ops.tsdi.logit_mean_update.default, (*state, aligned, ref, mask, normalize))
        torch.library.opcheck(torch.ops.tsdi.logit_mean_update.default, (*state, aligned, None, None, normalize))


def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    logits, bias, positions, temperature, top_k, top_p, seed = _opcheck_samples()

    def step(logits, bias, positions, temperature, top_k, top_p, seed):
        tokens = torch.ops.tsdi.debias_sample(logits * 1.0, bias, positions, temperature, top_k, top_p, seed, 1.0)
        probs = torch.ops.tsdi.debias_probs(logits, bias, positions, temperature, top_k, top_p, 1.0)
        return tokens, probs

    def accumulate(mean, m2, count, aligned, ref):
        torch.ops.tsdi.logit_mean_update(mean, m2, count, aligned, ref, None, True)
        return mean.sum()

    args = (logits, bias, positions, temperature, top_k, top_p, seed)
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True)(*args)
    assert torch.equal(eager[0], compiled[0])
    torch.testing.assert_close(eager[1], compiled[1], atol=0, rtol=0)

    aligned, ref = torch.randn(4, 3, 300), torch.randn(4, 3, 300)
    s_eager = [torch.zeros(3, 300), torch.zeros(3, 300), torch.zeros(3, dtype=torch.int64)]
    s_comp = [t.clone() for t in s_eager]
    accumulate(*s_eager, aligned, ref)
    torch.compile(accumulate, fullgraph=True, backend="aot_eager")(*s_comp, aligned, ref)
    for a, b in zip(s_eager, s_comp):
        assert torch.equal(a, b)


def test_package_works_without_the_extension():
    """A machine whose torch differs from the build's cannot load _C: the package must still import, say so in
    backends(), and serve every op from the reference (simulated with TSDI_DISABLE_EXTENSION=1)."""
    import os
    import subprocess
    import sys

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
