"""The Triton sampler's per-row report (debias_sample(..., report=dict)): candidate-buffer cuts counted as the
stream kernel's docstring describes them (a buffer of more than KEEP keys is cut to its KEEP / 2 best, or in a
top-k row with k <= TOP_J to its k + 1 best keys and their ties; such a row sorts its buffer at the end and cuts it
the same way, which counts when it drops keys), summed over the row's splits."""
import torch
from kernel_testing import REFERENCE, case_batch


def test_cut_counts_follow_the_buffer_rule(triton_kernel):
    """V = 1024, BLOCK = KEEP = 64 (cut to 32), 2 splits of 512 tokens (8 tiles each), T = 1, no bias.
    Every token of a 0.001-slope row is near (span ln V + 1 - ln 0.1 = 10.2 for p = 0.9):
      ascending: every tile's keys rank above the cutoff, so tiles 2..8 each overflow: 7 cuts a split, 14;
      descending: tile 2 overflows once, later tiles rank below the cutoff: 1 a split, 2;
    on a 0.5-slope row only 21 tokens a split are near (s >= max - 10.2): 0 cuts; with k = 10, p = 1 (span
    G_SPAN = 21): 43 near tokens a split, no overflow, but the end sort keeps k + 1 = 11 of 43: 1 a split, 2;
    on a 1.0-slope row with k = 10: 22 near tokens a split, the end sort keeps 11: 1 a split, 2 (a HALF cut, the
    rule before k + 1, kept all 22: 0); a row of 12 near tokens a split, values 0, -1, -2 four times each (far
    rest), k = 10: the 10th key's value -2 has 12 keys at or above it, the end sort keeps them and one more, i.e.
    all 12: 0 cuts (a cut to k + 1 without the ties would drop one: 2);
    rows without a candidate buffer (unfiltered, greedy): 0."""
    v = torch.arange(1024, dtype=torch.float32)
    ties = torch.where(v % 512 < 12, -torch.floor(v % 512 / 4), -100.0)
    rows = [(0.001 * v, (1.0, 0, 0.9, 0), 14), (-0.001 * v, (1.0, 0, 0.9, 0), 2), (-0.5 * v, (1.0, 0, 0.9, 0), 0),
            (-0.5 * v, (1.0, 10, 1.0, 0), 2), (-1.0 * v, (1.0, 10, 1.0, 0), 2), (ties, (1.0, 10, 1.0, 0), 0),
            (0.001 * v, (1.0, 0, 1.0, 0), 0), (0.001 * v, (0.0, 0, 0.9, 0), 0)]
    batch = case_batch(torch.stack([r[0] for r in rows]), None, [r[1] for r in rows])
    report = {}
    got = triton_kernel.sample(batch, **triton_kernel.launch(block=64, keep=64, splits=2, report=report))
    assert report["cuts"].dtype == torch.int64 and report["cuts"].shape == (len(rows),)
    assert report["cuts"].tolist() == [r[2] for r in rows]
    assert torch.equal(got, REFERENCE.sample(batch))
