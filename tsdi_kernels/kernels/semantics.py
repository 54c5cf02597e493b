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

This file imports nothing: setup.py executes it and passes the values to the C++ kernels as -D macros."""

TOP_P_TIE_BITS = 18
TOP_P_SCALE = 1.0 - 2.0 ** -TOP_P_TIE_BITS  # exactly representable in float32 (18 significant bits)
