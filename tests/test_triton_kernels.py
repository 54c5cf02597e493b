"""Triton kernels against the reference, on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1 is set
by conftest.py when CUDA is absent; on a GPU machine the same tests run the compiled kernels on CUDA).

The interpreter costs ~1 ms per program, tile and op, so V <= 4096, few rows, and small tiles / candidate
buffers / splits that exercise every path (buffer cuts, split merge, the exact fallback) at small sizes."""
import pytest
import torch

import tsdi_kernels
from tsdi_kernels.kernels import status
from tsdi_kernels.kernels.accumulate import reference as acc_reference
from tsdi_kernels.kernels.sampling import reference

pytest.importorskip("triton")
from tsdi_kernels.kernels.accumulate import triton_impl as triton_accumulate  # noqa: E402
from tsdi_kernels.kernels.sampling import triton_impl as triton_sample  # noqa: E402
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (block, keep, splits): the launcher's default, and small tiles / buffers with 3 splits (cuts, merges, fallback)
CONFIGS = {"default": {}, "small": {"block": 128, "keep": 128, "splits": 3}}


def _row_types(vocab, gen):
    """(name, logits row, temperature, top_k, top_p, position): the mixed batch of every test."""
    base = torch.randn(vocab, generator=gen) * 2.5
    ties = (torch.randn(vocab, generator=gen) * 2).round()  # many exactly equal values
    masked = base.clone()
    masked[torch.randperm(vocab, generator=gen)[: vocab // 3]] = float("-inf")
    flat = torch.randn(vocab, generator=gen) * 0.05  # top-p needs most of the vocabulary: fallback path
    wide = torch.randn(vocab, generator=gen)  # every token is "near" (buffers are cut), but a few dominate
    wide[torch.randperm(vocab, generator=gen)[:30]] += 9.0
    return [
        ("greedy", base, 0.0, 0, 1.0, 0),
        ("greedy-ties", ties, 0.0, 40, 0.5, 1),
        ("topk", base, 0.8, 20, 1.0, 2),
        ("topp", base, 0.7, 0, 0.9, 3),
        ("topk-topp", base, 1.3, 100, 0.8, 1),
        ("plain", base, 1.0, 0, 1.0, 0),
        ("ties-topk-topp", ties, 1.0, 7, 0.6, 2),
        ("masked", masked, 0.9, 0, 0.95, 9),  # position past L: no bias
        ("flat-topp", flat, 1.0, 0, 0.7, 5),
        ("flat-topk", flat, 1.0, 300, 1.0, 0),
        ("k>=V", base, 1.0, vocab + 5, 0.9, 2),
        ("cut-topp", wide, 1.0, 0, 0.8, 1),
        ("cut-topk", wide, 1.0, 25, 1.0, 1),
    ]


def _batch(vocab, dtype, seeds_per_row, gen, bias_rows=4):
    rows = _row_types(vocab, gen)
    names, logits, temp, top_k, top_p, pos, seed = [], [], [], [], [], [], []
    for i, (name, row, t, k, p, position) in enumerate(rows):
        for j in range(seeds_per_row):
            names.append(name)
            logits.append(row)
            temp.append(t)
            top_k.append(k)
            top_p.append(p)
            pos.append(position)
            seed.append(1000 * i + 7919 * j - 3)  # negative seeds too
    bias = torch.randn(bias_rows, vocab, generator=gen) * 0.5
    return names, dict(
        logits=torch.stack(logits).to(dtype), bias=bias, positions=torch.tensor(pos),
        temperature=torch.tensor(temp), top_k=torch.tensor(top_k), top_p=torch.tensor(top_p),
        seed=torch.tensor(seed), strength=0.8)


def _to(args, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def _triton(args, **cfg):
    d = _to(args, DEVICE)
    out = triton_sample.debias_sample(d["logits"], d["bias"], d["positions"], d["temperature"], d["top_k"],
                                       d["top_p"], d["seed"], d["strength"], **cfg)
    return out.cpu()


def _ref(args):
    return reference.debias_sample(args["logits"], args["bias"], args["positions"], args["temperature"],
                                   args["top_k"], args["top_p"], args["seed"], args["strength"])


def _ref_probs(args):
    probs, status = reference.debias_probs(args["logits"], args["bias"], args["positions"], args["temperature"],
                                           args["top_k"], args["top_p"], args["strength"])
    return probs


@pytest.mark.parametrize("cfg,dtype", [("default", torch.float32), ("small", torch.bfloat16)],
                         ids=["fp32-default", "bf16-small"])
def test_tokens_match_reference_mixed_batch(cfg, dtype):
    """Same seeds -> same tokens as the reference and the CPU kernel (>= 99%; exact unless two candidates are
    within rounding), and every token inside the reference's kept set (support)."""
    gen = torch.Generator().manual_seed(1)
    names, args = _batch(1000, dtype, 2, gen)
    got = _triton(args, **CONFIGS[cfg])
    want = _ref(args)
    probs = _ref_probs(args)
    assert (got >= 0).all(), got
    in_support = probs.gather(1, got[:, None])[:, 0] > 0
    assert in_support.all(), [n for n, ok in zip(names, in_support) if not ok]
    agree = (got == want).float().mean().item()
    mismatched = sorted({n for n, g, w in zip(names, got, want) if g != w})
    assert agree >= 0.99, (agree, mismatched)
    # and the CPU kernel (torch.ops.tsdi on CPU: the C++ extension when built, else the reference)
    cpu = torch.ops.tsdi.debias_sample(args["logits"], args["bias"], args["positions"], args["temperature"],
                                       args["top_k"], args["top_p"], args["seed"], args["strength"])
    assert (got == cpu).float().mean().item() >= 0.99, tsdi_kernels.backends()["debias_sample"]


def test_kept_set_over_many_seeds():
    """Tokens drawn with many seeds only ever land in the reference's kept set, and cover it (frequencies
    agree with the exact probabilities through identical draws: the seeds are the same as the reference's)."""
    gen = torch.Generator().manual_seed(2)
    vocab = 256
    row = torch.randn(vocab, generator=gen) * 1.5
    n = 64
    args = dict(logits=row.expand(n, vocab).contiguous(), bias=None, positions=torch.full((n,), 3),
                temperature=torch.full((n,), 0.9), top_k=torch.full((n,), 12), top_p=torch.full((n,), 0.85),
                seed=torch.arange(n) * 31 + 5, strength=1.0)
    got = _triton(args, block=256, keep=256)
    probs = _ref_probs(args)[0]
    kept = set(torch.nonzero(probs > 0)[:, 0].tolist())
    assert set(got.tolist()) <= kept
    assert (got == _ref(args)).float().mean() >= 0.99
    # the most likely kept token is drawn about as often as its probability says (64 draws, 5 sigma)
    top = int(probs.argmax())
    freq = (got == top).float().mean().item()
    sigma = (probs[top] * (1 - probs[top]) / n).sqrt().item()
    assert abs(freq - probs[top].item()) < 5 * sigma + 1e-3


def test_batch_invariance():
    """A row's token depends on its (logits, parameters, seed, position) only, not on its batch neighbours."""
    gen = torch.Generator().manual_seed(3)
    names, args = _batch(400, torch.float32, 1, gen)
    full = _triton(args, block=64, keep=64, splits=2)
    perm = torch.randperm(len(names), generator=gen)
    sub = perm[:5]
    args_sub = {k: v[sub] if isinstance(v, torch.Tensor) and k != "bias" else v for k, v in args.items()}
    part = _triton(args_sub, block=64, keep=64, splits=1)
    assert torch.equal(part, full[sub])


def test_status_codes_and_strided_rows():
    gen = torch.Generator().manual_seed(4)
    vocab = 500
    big = torch.randn(6, vocab + 37, generator=gen)
    logits = big[:, :vocab]  # row stride vocab + 37, unit stride along V
    logits[1, 17] = float("nan")
    logits[2] = float("-inf")
    logits[3, 4] = float("inf")
    logits[4, :] = float("-inf")
    logits[4, 123] = 2.0  # one finite value: always that token
    n = logits.shape[0]
    args = dict(logits=logits, bias=None, positions=torch.zeros(n, dtype=torch.int64),
                temperature=torch.tensor([1.0, 1.0, 0.0, 0.7, 0.5, 0.0]), top_k=torch.tensor([0, 5, 0, 3, 2, 0]),
                top_p=torch.tensor([0.9, 1.0, 1.0, 0.5, 0.3, 1.0]), seed=torch.arange(n), strength=1.0)
    assert logits.stride() == (vocab + 37, 1)
    got = _triton(args, block=128)
    want = _ref(args)
    assert got[1] == status.ERR_NAN and got[2] == status.ERR_NO_FINITE and got[3] == status.ERR_NO_FINITE
    assert got[4] == 123
    assert torch.equal(got, want)


def test_bias_makes_the_difference():
    """A bias row that removes the favourite token is applied at positions < L only."""
    vocab = 256
    logits = torch.zeros(2, vocab)
    logits[:, 10] = 5.0
    bias = torch.zeros(2, vocab)
    bias[1, 10] = 100.0
    args = dict(logits=logits, bias=bias, positions=torch.tensor([1, 2]), temperature=torch.zeros(2),
                top_k=torch.zeros(2, dtype=torch.int64), top_p=torch.ones(2), seed=torch.zeros(2, dtype=torch.int64),
                strength=1.0)
    got = _triton(args)
    assert got[0] != 10 and got[1] == 10
    assert torch.equal(got, _ref(args))


# --- logit_mean_update --------------------------------------------------------------------------------------


def _stats(length, vocab, gen):
    return [torch.randn(length, vocab, generator=gen), torch.rand(length, vocab, generator=gen) * 3,
            torch.randint(0, 4, (length,), generator=gen)]


def _np_stats(d, counted):
    """float64 mean and M2 over the counted rows of d [N, L, V]."""
    d = d.double()
    w = counted.double()[..., None]
    n = w.sum(0)
    mean = (w * d).sum(0) / n.clamp(min=1)
    m2 = (w * (d - mean) ** 2).sum(0)
    return mean, m2, n[:, 0].long()


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("with_ref", [True, False], ids=["ref", "noref"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "nomask"])
def test_accumulator_matches_reference(normalize, with_ref, with_mask):
    gen = torch.Generator().manual_seed(5)
    batch, length, vocab = 3, 3, 600
    aligned = (torch.randn(batch, length, vocab, generator=gen) * 3).bfloat16()
    ref = torch.randn(batch, length, vocab, generator=gen) if with_ref else None
    mask = (torch.rand(batch, length, generator=gen) > 0.3) if with_mask else None
    ours, theirs = _stats(length, vocab, gen), None
    theirs = [t.clone() for t in ours]
    dev = [t.to(DEVICE) for t in ours]
    where = triton_accumulate.logit_mean_update(*dev, aligned.to(DEVICE), None if ref is None else ref.to(DEVICE),
                                             None if mask is None else mask.to(DEVICE), normalize, block=256)
    ref_where = acc_reference.logit_mean_update(*theirs, aligned, ref, mask, normalize)
    assert where.tolist() == ref_where.tolist() == [-1, -1]
    torch.testing.assert_close(dev[0].cpu(), theirs[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(dev[1].cpu(), theirs[1], atol=2e-4, rtol=1e-5)
    assert torch.equal(dev[2].cpu(), theirs[2])


def test_accumulator_chan_merge_over_splits_vs_float64():
    """Updates with batches of 2, 3 and 1 rows equal the float64 statistics of all 6 rows at once."""
    gen = torch.Generator().manual_seed(6)
    batch, length, vocab = 6, 2, 333
    aligned = torch.randn(batch, length, vocab, generator=gen) * 4
    ref = torch.randn(batch, length, vocab, generator=gen) * 4
    mask = torch.rand(batch, length, generator=gen) > 0.25
    mean, m2, count = (torch.zeros(length, vocab), torch.zeros(length, vocab),
                       torch.zeros(length, dtype=torch.int64))
    dev = [t.to(DEVICE) for t in (mean, m2, count)]
    for lo, hi in ((0, 2), (2, 5), (5, 6)):
        where = triton_accumulate.logit_mean_update(*dev, aligned[lo:hi].to(DEVICE), ref[lo:hi].to(DEVICE),
                                                 mask[lo:hi].to(DEVICE), True, block=64, splits=3)
        assert where.tolist() == [-1, -1]
    d = torch.log_softmax(aligned.double(), -1) - torch.log_softmax(ref.double(), -1)
    want_mean, want_m2, want_n = _np_stats(d, mask)
    assert torch.equal(dev[2].cpu(), want_n)
    torch.testing.assert_close(dev[0].cpu().double(), want_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dev[1].cpu().double(), want_m2, atol=1e-4, rtol=1e-5)


def test_accumulator_untouched_on_error_and_deterministic():
    gen = torch.Generator().manual_seed(7)
    batch, length, vocab = 3, 4, 300
    aligned = torch.randn(batch, length, vocab, generator=gen)
    ref = torch.randn(batch, length, vocab, generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    aligned[2, 0, 5] = float("nan")
    ref[1, 3, 7] = float("-inf")  # -inf is non-finite in d as well
    aligned[0, 1, 9] = float("inf")
    mask[0, 1] = False  # a bad row that is not counted is ignored
    stats = _stats(length, vocab, gen)
    dev = [t.clone().to(DEVICE) for t in stats]
    where = triton_accumulate.logit_mean_update(*dev, aligned.to(DEVICE), ref.to(DEVICE), mask.to(DEVICE), True,
                                             block=128)
    assert where.tolist() == [1, 3] == acc_reference.logit_mean_update(*[t.clone() for t in stats], aligned, ref,
                                                                     mask, True).tolist()
    for a, b in zip(dev, stats):
        assert torch.equal(a.cpu(), b)
    # deterministic: the same update twice gives bitwise the same statistics
    aligned[2, 0, 5] = 0.0
    ref[1, 3, 7] = 0.0
    runs = []
    for _ in range(2):
        dev = [t.clone().to(DEVICE) for t in stats]
        assert triton_accumulate.logit_mean_update(*dev, aligned.to(DEVICE), ref.to(DEVICE), mask.to(DEVICE), True,
                                                block=128).tolist() == [-1, -1]
        runs.append([t.cpu() for t in dev])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_many_splits_agree_with_one():
    """Up to MAX_SPLITS-like fan-out: the split merge (only splits near the row max contribute candidates) gives
    the reference's tokens."""
    gen = torch.Generator().manual_seed(8)
    names, args = _batch(900, torch.float32, 1, gen)
    pick = torch.tensor([i for i, n in enumerate(names) if n in ("topp", "topk-topp", "cut-topp", "masked", "plain",
                                                                "greedy")])
    sub = {k: v[pick] if isinstance(v, torch.Tensor) and k != "bias" else v for k, v in args.items()}
    many = _triton(sub, block=64, keep=64, splits=12)
    assert torch.equal(many, _ref(sub))
