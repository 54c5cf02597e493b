"""What the benchmarks compare the TSDI kernels against, written once (bench_cpu_ops.py, bench_generate.py,
gpu_check.py import it).

    hf_sampler(temperature, top_k, top_p)   the Hugging Face sampling step a user runs today: subtract the bias
                                            row of each batch row, TemperatureLogitsWarper, TopKLogitsWarper,
                                            TopPLogitsWarper, softmax, torch.multinomial; returns int64 [B]
    hf_generate(model, bias, ...)           model.generate with TSDILogitsProcessor (the unfused decode loop)
    SAMPLING                                the named sampling configurations of the tables

The warpers are built once per configuration, as `generate` builds them once per call, so a timed call is the
per-step work only. A warper that HF would not add is left out: top_k = 0 (disabled) adds no TopKLogitsWarper,
top_p = 1 no TopPLogitsWarper, temperature = 1 no TemperatureLogitsWarper (HF's `_get_logits_processor` rules).

Import as `from benchmarks.baselines import ...`: pytest puts the repository root on sys.path for the benchmark
files (benchmarks/ is a package), and gpu_check.py is run from the root with PYTHONPATH=. (or `python3 -m
benchmarks.gpu_check`). transformers is imported on first use, so `gpu_check.py --dry-run` needs torch only.
"""
from __future__ import annotations

from typing import Callable, Optional

# name -> (temperature, top_k, top_p): the configurations issue 9 measures (top_k = 0 disables top-k)
SAMPLING = {
    "k50 p0.9": dict(temperature=0.7, top_k=50, top_p=0.9),
    "p0.9": dict(temperature=0.7, top_k=0, top_p=0.9),
}


def hf_warpers(temperature: float, top_k: int, top_p: float) -> list:
    """The warpers `generate(do_sample=True, temperature=..., top_k=..., top_p=...)` applies, in HF's order."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def hf_sampler(temperature: float = 0.7, top_k: int = 50, top_p: float = 0.9,
               strength: float = 1.0) -> Callable:
    """fn(logits [B, V], bias [L, V] float32 or None, positions int64 [B]) -> int64 [B] sampled tokens.
    Every position must be < L (the benchmarks' inputs draw them from the L rows)."""
    import torch

    warpers = hf_warpers(temperature, top_k, top_p)

    def sample(logits, bias: Optional["torch.Tensor"], positions):
        scores = logits.float()
        if bias is not None:
            scores = scores - (bias[positions] if strength == 1.0 else strength * bias[positions])
        for warper in warpers:
            scores = warper(None, scores)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)

    return sample


def hf_generate(model, bias, input_ids, prompt_length: int, max_new_tokens: int, **sampling):
    """Unfused TSDI decoding: Hugging Face generate with TSDILogitsProcessor (answer positions counted from
    `prompt_length`) and HF's own warpers from `sampling` (do_sample, temperature, top_k, top_p)."""
    from tsdi_kernels import TSDILogitsProcessor

    processor = TSDILogitsProcessor(bias, prompt_length)
    return model.generate(input_ids, logits_processor=[processor], max_new_tokens=max_new_tokens, **sampling)
