"""tsdi_kernels: Token-level Safety-Debiased Inference (arXiv 2502.02153) as fused PyTorch kernels.

Three layers, each importing only those below it (docs/architecture.md):
    kernels/       torch.ops.tsdi.{debias_sample, debias_probs, logit_mean_update}: references, C++, Triton
    pipeline/      BiasTable (statistics + file format), random prompts, streaming estimation
    integrations/  Hugging Face generation (and vLLM serving)
    demo/          the embedded SmolLM2 pair, its adapter, prompts and refusal judge (apart from the library)

`import tsdi_kernels` registers the ops and needs torch only: the pipeline and the integrations are imported on
first use of their names (transformers only with the Hugging Face integration)."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .kernels import backends, check_tokens, debias_probs, debias_sample, set_backend, use_backend  # noqa: E402

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "BiasTable": ".pipeline.bias",
    "estimate_bias": ".pipeline.estimate",
    "TSDILogitsProcessor": ".integrations.hf",
    "fused_sampler": ".integrations.hf",
    "generate": ".integrations.hf",
}

__all__ = [
    "__version__", "backends", "set_backend", "use_backend", "debias_sample", "debias_probs", "check_tokens", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
