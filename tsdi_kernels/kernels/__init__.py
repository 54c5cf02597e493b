"""The kernel layer: torch.ops.tsdi.* with their references, C++ (CPU) and Triton (CUDA) kernels.

    status.py, validation.py, library.py   error codes, argument checks, the `tsdi` library and backend choice
    sampling/  op.py (debias_sample, debias_probs) | reference.py | philox.py | triton_impl.py | csrc/sample.cpp
    accumulate/ op.py (logit_mean_update)           | reference.py |              triton_impl.py | csrc/accumulate.cpp
    api.py      scalar-friendly Python wrappers of the sampling ops
Importing this package registers the ops; it needs torch only."""
from .accumulate import op as _accumulate_op  # noqa: F401  (defines torch.ops.tsdi.logit_mean_update)
from .api import debias_probs, debias_sample
from .library import backends, set_backend, use_backend
from .sampling.op import check_tokens

__all__ = ["backends", "check_tokens", "debias_probs", "debias_sample", "set_backend", "use_backend"]
