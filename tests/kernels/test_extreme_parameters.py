"""Parameters at the edge of their range, on every kernel: never a wrong token (issue: nothing silently wrong).

- a temperature so small that max(z) / T overflows float32 decides the row greedily (its T -> 0 limit), with or
  without top-k / top-p, on every kernel, and debias_probs is the one-hot of the argmax;
- per-row parameters out of range come back as their status code, checked inside the kernels' pass
  (positions outside [0, 2**32) included: the noise counter holds 32 bits of the position);
- inputs that require grad are refused by every op backend alike (the ops are not differentiable);
- negative counts, V = 0 and L = 0 are refused by logit_mean_update before anything is updated."""
import pytest
import torch

from tsdi_kernels.kernels import status

from kernel_testing import Batch


def _rows(logits, **params) -> Batch:
    batch = logits.shape[0]

    def col(name, default, dtype):
        value = params.get(name, default)
        return torch.as_tensor(value, dtype=dtype).expand(batch).clone()

    return Batch(logits=logits, bias=None, positions=col("positions", 0, torch.int64),
                 temperature=col("temperature", 1.0, torch.float32), top_k=col("top_k", 0, torch.int64),
                 top_p=col("top_p", 1.0, torch.float32), seed=torch.arange(batch, dtype=torch.int64))


# (logits row, expected greedy token): the example, a negative row (every scaled logit -> -inf), a row
# whose argmax is not first
OVERFLOW_ROWS = [([1.0, 2.0, 0.5], 1), ([-1.0, -2.0, -0.5], 2), ([3.0, -1.0, 7.5, 7.0], 2)]


@pytest.mark.parametrize("temperature", [1e-40, 1e-38])
@pytest.mark.parametrize("filters", [{}, {"top_p": 0.9}, {"top_k": 2}, {"top_k": 2, "top_p": 0.5}],
                         ids=["plain", "p0.9", "k2", "k2-p0.5"])
def test_overflowing_temperature_is_greedy(kernel, temperature, filters):
    for row, want in OVERFLOW_ROWS:
        logits = torch.tensor([row] * 4)
        if abs(max(row, key=abs)) / temperature < 3.4e38:
            continue  # this temperature does not overflow this row: an ordinary draw, covered elsewhere
        tokens = kernel.sample(_rows(logits, temperature=temperature, **filters))
        assert tokens.tolist() == [want] * 4, (row, temperature, filters)


def test_overflowing_temperature_probs_are_one_hot(probs_kernel):
    for row, want in OVERFLOW_ROWS:
        probs, codes = probs_kernel.probs(_rows(torch.tensor([row]), temperature=1e-40, top_p=0.9))
        assert codes.tolist() == [0]
        expected = torch.zeros(1, len(row))
        expected[0, want] = 1.0
        assert torch.equal(probs, expected)


BAD_PARAMS = [
    ({"positions": -1}, status.ERR_POSITION),
    ({"positions": 2**32}, status.ERR_POSITION),
    ({"positions": 2**40 + 3}, status.ERR_POSITION),
    ({"temperature": -0.5}, status.ERR_TEMPERATURE),
    ({"temperature": float("nan")}, status.ERR_TEMPERATURE),
    ({"top_k": -2}, status.ERR_TOP_K),
    ({"top_p": 0.0}, status.ERR_TOP_P),
    ({"top_p": 1.5}, status.ERR_TOP_P),
    ({"top_p": float("nan")}, status.ERR_TOP_P),
]


@pytest.mark.parametrize("params,code", BAD_PARAMS, ids=[f"{next(iter(p))}={next(iter(p.values()))}" for p, _ in BAD_PARAMS])
def test_bad_row_parameters_come_back_as_their_code(kernel, params, code):
    """Only the bad row is flagged; its neighbours are drawn as usual (same tokens as alone)."""
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    good = kernel.sample(_rows(logits, temperature=0.8, top_p=0.9))
    batch = _rows(logits, temperature=0.8, top_p=0.9)
    for name, value in params.items():
        getattr(batch, name)[1] = value
    tokens = kernel.sample(batch)
    assert tokens[1].item() == code
    assert tokens[[0, 2]].tolist() == good[[0, 2]].tolist()


def test_positions_below_2_pow_32_are_accepted(op_backend):
    logits = op_backend.to(torch.randn(2, 50))
    positions = op_backend.to(torch.tensor([2**32 - 1, 0]))
    ones, zeros = op_backend.to(torch.ones(2), torch.zeros(2, dtype=torch.int64))
    tokens = torch.ops.tsdi.debias_sample(logits, None, positions, ones, zeros, ones, zeros, 1.0)
    assert ((tokens >= 0) & (tokens < 50)).all()


def test_inputs_requiring_grad_are_refused_by_every_backend(op_backend):
    logits = op_backend.to(torch.randn(2, 30)).requires_grad_()
    bias = op_backend.to(torch.zeros(3, 30))
    row = op_backend.to(torch.zeros(2, dtype=torch.int64), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="`logits` requires grad.*not differentiable"):
        torch.ops.tsdi.debias_probs(logits, bias, row[0], row[1], row[0], row[2], 1.0)
    with pytest.raises(ValueError, match="`bias` requires grad"):
        torch.ops.tsdi.debias_sample(logits.detach(), bias.requires_grad_(), row[0], row[1], row[0], row[2], row[0],
                                     1.0)
    mean, m2 = op_backend.to(torch.zeros(2, 30), torch.zeros(2, 30))
    count = op_backend.to(torch.zeros(2, dtype=torch.int64))
    aligned = op_backend.to(torch.randn(4, 2, 30))
    with pytest.raises(ValueError, match="`mean` requires grad"):
        torch.ops.tsdi.logit_mean_update(mean.requires_grad_(), m2, count, aligned, None, None, True)


@pytest.mark.parametrize("case", ["negative-count", "V0", "L0"])
def test_accumulator_refuses_degenerate_state_before_updating(op_backend, case):
    length, vocab = (0, 5) if case == "L0" else (2, 0 if case == "V0" else 5)
    mean, m2 = op_backend.to(torch.zeros(length, vocab), torch.zeros(length, vocab))
    count = op_backend.to(torch.tensor([-1, 0][:length]) if case == "negative-count"
                          else torch.zeros(length, dtype=torch.int64))
    before = [t.clone() for t in (mean, m2, count)]
    aligned = op_backend.to(torch.randn(3, length, vocab))
    match = {"negative-count": "`count` must be >= 0", "V0": "V = 0", "L0": "L = 0"}[case]
    with pytest.raises(ValueError, match=match):
        torch.ops.tsdi.logit_mean_update(mean, m2, count, aligned, None, None, True)
    assert all(torch.equal(a, b) for a, b in zip(before, (mean, m2, count)))
