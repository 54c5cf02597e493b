"""Row status codes, written once for every backend.

A kernel reports a bad row by writing a negative code in place of its token (debias_sample) or in a status
vector (debias_probs); the op layer turns the code into a ValueError naming the argument. The reference and the
Triton kernels import the values from here; setup.py reads this file and passes them to the C++ kernels as
-DTSDI_ERR_* macros, so the three backends cannot drift apart. This file imports nothing on purpose (setup.py
executes it before torch is importable in a build environment)."""

ERR_NAN = -1  # a row of the debiased logits contains NaN
ERR_NO_FINITE = -2  # a row has no finite debiased logit, or contains +inf

MESSAGES = {
    ERR_NAN: "row {row} of `logits` (minus strength * `bias`) contains NaN",
    ERR_NO_FINITE: "row {row} of `logits` (minus strength * `bias`) has no finite value or contains +inf",
}


def message(code: int, row: int) -> str:
    """The user-facing text of a status code for batch row `row`."""
    return MESSAGES.get(code, "row {row}: unknown kernel status " + str(code)).format(row=row)
