"""tsdi_kernels: Token-level Safety-Debiased Inference (arXiv 2502.02153) as fused PyTorch kernels.

`import tsdi_kernels` registers torch.ops.tsdi.{debias_sample, debias_probs, logit_mean_update}."""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: F401  (registers torch.ops.tsdi.*)
from .api import LogitMeanAccumulator, debias_probs, debias_sample
from .ops import backends, use_backend

__all__ = [
    "__version__",
    "backends",
    "use_backend",
    "debias_sample",
    "debias_probs",
    "LogitMeanAccumulator",
]

# The TSDI pipeline on top of the ops (issue 4): bias tables, estimation, Hugging Face generation.
from .bias import BiasTable  # noqa: E402
from .estimate import estimate_bias  # noqa: E402
from .hf import TSDILogitsProcessor, fused_sampler, generate  # noqa: E402

__all__ += ["BiasTable", "estimate_bias", "TSDILogitsProcessor", "fused_sampler", "generate"]
