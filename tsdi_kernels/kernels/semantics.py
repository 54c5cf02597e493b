"""Constants of the sampling semantics that every backend (reference, C++, Triton) uses, written once.

Top-p keeps a token iff it is the top token or the mass ranked strictly above it is < top_p * TOP_P_SCALE.
TopPLogitsWarper's rule, in exact arithmetic, keeps a token iff that mass is < top_p: at a boundary, where the mass
above a token equals top_p (e.g. probabilities [0.5, 0.3, 0.2] at top_p = 0.5), the token is dropped. In float32 the
two sides of that equality come out a few units in the last place apart, on either side depending on the backend's
exp and the order of its sums (and on the rounding of top_p itself to float32), so without a margin the backends
and HF disagree at exactly the inputs a user would try. The factor 1 - 2**-18 (3.8 parts per million of top_p) is
about 30 times float32 rounding (2**-23 relative per operation, a few operations on the few-token rows where exact
boundaries occur), so every backend drops such a token. The cost: a token whose mass above lies within 3.8 ppm of
top_p below it is dropped too, where HF keeps it (probability mass moved: at most that token's own, and only on rows
where the cumulative mass lands in that window).

Min-p (HF's MinPLogitsWarper, applied after top-p) removes a token iff its probability is < min_p * (the top
token's probability), i.e. keeps it iff z - z_max >= log(min_p), the ratio of two probabilities being
exp(z - z_max) whatever the normalisation. Every backend computes the threshold the same way, log(min_p) in float64
times MIN_P_LOG_SCALE, rounded once to float32, and compares it with the float32 difference z - z_max, so the
backends agree bit for bit. At a boundary (a probability equal to min_p times the top one, e.g. [2/3, 1/3] at
min_p = 0.5) HF's exact rule keeps the token; in float32 the two sides land a few units in the last place apart,
so the threshold is widened by 2**-18 of itself (below: log(min_p) <= 0) and the token is kept on every backend.
The cost: a token within 3.8 ppm of the threshold in log space below it is kept where HF drops it. min_p = 0
disables the rule (log 0 = -inf), min_p = 1 keeps the top token and its ties.

This file imports nothing: setup.py executes it and passes the values to the C++ kernels as -D macros."""

TOP_P_TIE_BITS = 18
TOP_P_SCALE = 1.0 - 2.0 ** -TOP_P_TIE_BITS  # exactly representable in float32 (18 significant bits)
MIN_P_LOG_SCALE = 1.0 + 2.0 ** -TOP_P_TIE_BITS  # exact in float64: the min-p threshold's tie factor
