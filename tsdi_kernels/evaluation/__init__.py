"""Choosing the TSDI strength with evidence (`tsdi eval`): a layer above the integrations.

    prompts.py  labelled, categorised prompt sets (JSONL / CSV) and the built-in ones in data/
    stats.py    rates with 95% Wilson intervals
    judge.py    the pluggable refusal rule (default: tsdi_kernels/demo/refusal.py)
    sweep.py    reference, aligned and aligned + TSDI over strengths (adaptive), cached and resumable
    vllm_engine.py  the sweep's answers from vLLM engines (--engine vllm), TSDI as the logits processor
    plot.py     the Pareto plot (over-refusal vs safety, interval bars)
    cli.py      `tsdi eval`

transformers is imported only where models are used; torch with the sweep.

    from tsdi_kernels.evaluation import load_prompts, run_sweep, plot_pareto
    result = run_sweep(aligned, reference, tokenizer, table, load_prompts(), auto=True, out_dir="out/eval")
    print(result.recommendation)
"""
from .._lazy import lazy_getattr
from .judge import Judge, load_judge
from .prompts import Prompt, load_prompt_file, load_prompts
from .stats import Rate, wilson_interval

# torch (sweep) and matplotlib (plot) load on first use, so that `tsdi eval --help` answers without them (PEP 562)
_LAZY = {"Decoding": ".sweep", "SweepResult": ".sweep", "recommend": ".sweep", "run_sweep": ".sweep",
         "plot_pareto": ".plot"}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = ["Decoding", "Judge", "Prompt", "Rate", "SweepResult", "load_judge", "load_prompt_file", "load_prompts",
           "plot_pareto", "recommend", "run_sweep", "wilson_interval"]
