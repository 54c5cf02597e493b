"""Top-k rows (k <= TOP_J) whose k-th value is tied, in the Triton sampler.

A cut candidate buffer of such a row keeps only its best k + 1 keys and their ties, and its cutoff rises to the
last of them: it holds every token of the split whose PACKED key (value, then index) is >= the cutoff. Tokens of
the cutoff's VALUE with a lower index may be missing, and HF keeps every token tied with the k-th value. The rows
below put the row's top-k into one split with ties at the k-th value, so that the split's (k + 1)-th value ties the
row's k-th (the danger), in some layouts with more ties than the buffer's KEEP / 2 (the cutoff's value then IS the
k-th), and at the edges (one tie past the k-th, the (k-1)-th above the k-th, exactly k tokens of the top value).
Tokens must equal the reference's over several seeds: the missing ties would be the lowest-ranked survivors, but
in these flat rows they carry a large share of the mass, so a kept set without them changes tokens. (Checked
against deliberately wrong tie rules: cut to k + 1 keys with no tie check in kernel 2, or with the check off by one
(>=), or ties counted from the (k-1)-th key: each changes tokens here.)
"""
import pytest
import torch

from kernel_testing import REFERENCE, Batch

K = 50
VOCAB = 1024
HALF = 64  # KEEP / 2 for keep = 128
# (n3, n2) per layout: tokens of value 3.0 and 2.75 in the hot split. k-th value 2.75 with n2 + 2 ties kept (n3 < K),
# 3.0 (n3 >= K); n3 = K - 1: the (k-1)-th value is above the k-th; n3 + n2 = K + 1: exactly one tie past the k-th
LAYOUTS = [(10, 45), (20, 35), (30, 21), (40, 20), (44, 19), (49, 5), (49, 12), (50, 1), (50, 10), (55, 5),
           (25, 40), (35, 35), (12, 60), (49, 40), (70, 5), (64, 3)]
SEEDS = 4  # seeds per layout


def capped(n3, n2, splits):
    """The hot split's k + 1 best keys and their ties overflow KEEP / 2: its cutoff's value is the k-th value, the
    ties below it are missing, kernel 2 must not trust the candidates (the exact fallback kernel decides). One
    split: the row, whose two other 2.75 tie too."""
    return (n3 + n2 + (2 if splits == 1 else 0) if n3 < K else n3) + 1 > HALF


def tied_rows():
    """bf16 logits, multiples of 0.25 (exact ties): a bulk in [-3, 1.5] and, in one "hot" split of 256 tokens,
    n3 tokens of 3.0 and n2 of 2.75 at random places (LAYOUTS), two 2.75 and four 2.5 in the other splits."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for i, (n3, n2) in enumerate(LAYOUTS):
        x = torch.randint(-12, 7, (VOCAB,), generator=g).float() / 4
        hot = (i % 4) * 256
        pos = hot + torch.randperm(256, generator=g)[: n3 + n2]
        x[pos[:n3]] = 3.0
        x[pos[n3:]] = 2.75
        other = torch.randperm(VOCAB - 256, generator=g)[:6]
        other = other + (other >= hot).long() * 256  # outside the hot split
        x[other[:2]] = 2.75
        x[other[2:]] = 2.5
        rows.append(x)
    return torch.stack(rows).to(torch.bfloat16)


def tied_batch(top_p, temperature):
    logits = tied_rows().repeat_interleave(SEEDS, dim=0)
    b = logits.shape[0]
    return Batch(logits=logits, bias=None, positions=torch.arange(b, dtype=torch.int64) % 3,
                 temperature=torch.full((b,), temperature), top_k=torch.full((b,), K, dtype=torch.int64),
                 top_p=torch.full((b,), top_p), seed=torch.arange(b, dtype=torch.int64) * 104729 + 1)


@pytest.mark.parametrize("splits", [1, 4], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("top_p,temperature", [(1.0, 1.0), (0.9, 0.5)], ids=["k50", "k50-p0.9-T0.5"])
def test_ties_at_the_kth_value_keep_the_reference_tokens(triton_kernel, splits, top_p, temperature):
    """BLOCK = KEEP = 128 (cut to <= 64, TOP_J = 64): a split of 256 near tokens overflows at its second tile,
    and every split's final sort keeps k + 1 keys and their ties. Tokens equal the reference's on every row."""
    batch = tied_batch(top_p, temperature)
    report = {}
    got = triton_kernel.sample(batch, **triton_kernel.launch(block=128, keep=128, splits=splits, report=report))
    want = REFERENCE.sample(batch)
    # the kept sets are large (50 to 91 tokens with the ties): many distinct tokens, so a wrong set shows
    assert len(set(want.tolist())) > len(LAYOUTS) * SEEDS // 2
    assert (report["cuts"] > 0).all()  # the buffers were cut: the tie rule was exercised
    assert torch.equal(got, want), (got != want).nonzero().flatten().tolist()
    # the tie rule keeps the cutoff's value below the k-th unless the ties overflow: only those rows fall back
    fallback = torch.tensor([capped(*layout, splits) for layout in LAYOUTS]).repeat_interleave(SEEDS)
    assert torch.equal(report["fallback"].cpu(), fallback), report["fallback"].tolist()
