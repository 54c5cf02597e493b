"""How often the top-p kept set differs from HF's TopPLogitsWarper, measured on FlashInfer's inputs
(tests/test_sampling.py::test_top_p_renorm_probs: torch.manual_seed(42), torch.rand(99, 32000) normalised).

semantics.py drops a token whose mass ranked above lies within 2**-18 of top_p below it, and our float32 sums differ
from HF's (float64 cumulative sum on CPU) by a few 1e-7: on these near-uniform rows (the nucleus holds thousands of
tokens, each ~3e-5 of the mass) the last token of HF's nucleus often lies in that band. docs/semantics.md states the
rate this test measures; every differing token must lie in the band (never a disagreement away from the boundary)."""
import pytest
import torch
from kernel_testing import Batch
from transformers.generation.logits_process import TopPLogitsWarper

# |mass above - top_p| of a token the backends may decide differently from HF: 2**-18 * top_p (3.4e-6 at 0.9)
# plus float32 summation error over ~30000 terms (measured up to 6.3e-6 in total); 1e-5 bounds both.
BAND = 1e-5


@pytest.mark.parametrize("top_p, most_rows", [(0.1, 0), (0.5, 10), (0.9, 20)])
def test_top_p_against_hf_on_flashinfer_inputs(probs_kernel, top_p, most_rows):
    torch.manual_seed(42)
    pre = torch.rand(99, 32000)
    probs = pre / pre.sum(-1, keepdim=True)
    logits = probs.log()
    hf = TopPLogitsWarper(top_p)(None, logits.clone()) > float("-inf")
    batch = Batch(logits, None, torch.zeros(99, dtype=torch.int64), torch.ones(99),
                  torch.zeros(99, dtype=torch.int64), torch.full((99,), top_p), torch.arange(99))
    ours = probs_kernel.probs(batch)[0] > 0
    differing = (hf != ours).any(dim=1)
    # measured: 0 / 99 rows at 0.1, 7 at 0.5, 16 (reference) and 17 (C++) at 0.9 (docs/semantics.md)
    assert int(differing.sum()) <= most_rows
    p64 = probs.double()
    for row in differing.nonzero().flatten().tolist():
        for token in (hf[row] != ours[row]).nonzero().flatten().tolist():
            above = p64[row][p64[row] > p64[row, token]].sum().item()
            assert abs(above - top_p) < BAND, (row, token, above)
