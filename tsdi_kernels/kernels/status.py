"""Row status codes, written once for every backend.

A kernel reports a bad row by writing a negative code in place of its token (debias_sample) or in a status
vector (debias_probs); the op layer turns the code into a ValueError naming the argument and the row. The
per-row parameter ranges are checked inside the kernels' pass (a separate check would cost several reductions
and, on a GPU, a host round-trip per call). The reference and the Triton kernels import the values from here;
setup.py executes this file and passes them to the C++ kernels as -DTSDI_ERR_* macros, so the backends cannot
drift apart. It imports nothing on purpose (setup.py runs it before torch is importable in a build environment).

A temperature > 0 so small that the row's largest debiased logit divided by it overflows float32 (e.g. 1e-40)
is not an error: the row is decided greedily, its T -> 0 limit, by every backend (never a token drawn from
overflowed values).

When a row has several problems, the first in this order is reported: parameters (position, temperature, top-k,
top-p, min-p), then NaN, then no finite logit / +inf."""

ERR_NAN = -1  # a row of the debiased logits contains NaN
ERR_NO_FINITE = -2  # a row has no finite debiased logit, or contains +inf
ERR_POSITION = -3  # positions[b] outside [0, 2**32): the noise key holds 32 bits of the position
ERR_TEMPERATURE = -4  # temperature[b] < 0 or NaN
ERR_TOP_K = -5  # top_k[b] < 0
ERR_TOP_P = -6  # top_p[b] outside (0, 1] or NaN
ERR_MIN_P = -7  # min_p[b] outside [0, 1] or NaN

# Codes are -1 .. -99; kernels may use values below -99 internally.
CODES = ("ERR_NAN", "ERR_NO_FINITE", "ERR_POSITION", "ERR_TEMPERATURE", "ERR_TOP_K", "ERR_TOP_P", "ERR_MIN_P")

MESSAGES = {
    ERR_NAN: "row {row} of `logits` (minus strength * `bias`) contains NaN",
    ERR_NO_FINITE: "row {row} of `logits` (minus strength * `bias`) has no finite value or contains +inf",
    ERR_POSITION: "`positions` must be in [0, 2**32) (row {row})",
    ERR_TEMPERATURE: "`temperature` must be >= 0 (0 = greedy) and not NaN (row {row})",
    ERR_TOP_K: "`top_k` must be >= 0 (0 = disabled) (row {row})",
    ERR_TOP_P: "`top_p` must be in (0, 1] (1 = disabled) (row {row})",
    ERR_MIN_P: "`min_p` must be in [0, 1] (0 = disabled) (row {row})",
}


def message(code: int, row: int) -> str:
    """The user-facing text of a status code for batch row `row`."""
    return MESSAGES.get(code, "row {row}: unknown kernel status " + str(code)).format(row=row)
