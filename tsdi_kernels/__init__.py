"""tsdi_kernels: Token-level Safety-Debiased Inference (arXiv 2502.02153) as fused PyTorch kernels.

Layers, each importing only those below it (docs/architecture.md):
    kernels/       torch.ops.tsdi.{debias_sample, debias_probs, logit_mean_update}: references, C++, Triton
    pipeline/      BiasTable (statistics + file format), random prompts, streaming estimation
    integrations/  Hugging Face generation (and vLLM serving)
    evaluation/    `tsdi eval`: the strength sweep, refusal judge, recommendation, report
    demo/          the embedded SmolLM2 pair, its adapter and prompts (apart from the library)
    cli/           the `tsdi` command

`import tsdi_kernels` registers the ops and needs torch only: the pipeline and the integrations are imported on
first use of their names (transformers only with the Hugging Face integration)."""
from __future__ import annotations

import os
import sys

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_KERNEL_NAMES = ("backends", "check_tokens", "debias_probs", "debias_sample", "set_backend", "use_backend")

# The `tsdi` console script imports this package before it can parse a single argument, and registering the ops
# means importing torch (2-5 s). So that `tsdi --help` and argument errors answer at once, when the running program
# is that script and torch is not imported yet, the kernel names are served lazily like the others below; the
# CLI imports what a command needs after its arguments are checked, and every module that calls torch.ops.tsdi
# imports `.kernels` (which registers the ops) itself. Everywhere else `import tsdi_kernels` registers the ops.
_CLI_LAZY = os.path.basename(sys.argv[0] if sys.argv else "") == "tsdi" and "torch" not in sys.modules
if not _CLI_LAZY:
    from .kernels import backends, check_tokens, debias_probs, debias_sample, set_backend, use_backend  # noqa: E402,F401

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    **({name: ".kernels" for name in _KERNEL_NAMES} if _CLI_LAZY else {}),
    "BiasTable": ".pipeline.bias",
    "estimate_bias": ".pipeline.estimate",
    "TSDILogitsProcessor": ".integrations.hf",
    "fused_sampler": ".integrations.hf",
    "generate": ".integrations.hf",
}

__all__ = ["__version__", *_KERNEL_NAMES, *(name for name in _LAZY if name not in _KERNEL_NAMES)]


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
