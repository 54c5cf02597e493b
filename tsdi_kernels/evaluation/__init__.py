"""Choosing the TSDI strength with evidence (`tsdi eval`, tsdi_kernels/cli/eval.py): a layer above the
integrations, below the demo (which runs its sweep) and the command line.

    prompts.py  labelled, categorised prompt sets (JSONL / CSV) and the built-in ones in data/
    stats.py    rates with 95% Wilson intervals
    paired.py   paired differences (aligned vs a strength, same prompts) with Tango's interval; the strength rule
    refusal.py  the string rules that mark a refusal; judge.py: pluggable judges (default: those rules)
    settings.py what a sweep evaluates: configurations, Decoding, SweepSettings (no torch)
    sweep.py    run_sweep: reference, aligned and aligned + TSDI over strengths (adaptive), cached and resumable
    engine.py   the Engine protocol; hf_engine.py (tsdi_kernels.generate), vllm_engine.py (vLLM, --engine vllm)
    cache.py    fingerprints and the per-answer JSONL cache
    answers.py  batching: every missing (configuration, prompt) answer
    search.py   which strengths to add (--auto)
    result.py   SweepResult and the per-configuration summary
    recommend.py  the recommended strength (the paired rule on the validation split, reported on the test split)
    report.py   tables and results.json; plot.py: the Pareto plot (over-refusal vs safety, interval bars)
    cli.py      `tsdi eval`

transformers is imported only where models are used; torch with the sweep.

    from tsdi_kernels.evaluation import SweepSettings, load_prompts, run_sweep, plot_pareto
    result = run_sweep(aligned, reference, tokenizer, table, load_prompts(), SweepSettings(auto=True),
                       out_dir="out/eval")
    print(result.recommendation)
"""
from .._lazy import lazy_getattr
from .judge import Judge, load_judge
from .paired import Paired, recommend_strength
from .prompts import Prompt, load_prompt_file, load_prompts
from .stats import Rate, wilson_interval

# torch (sweep) and matplotlib (plot) load on first use, so that `tsdi eval --help` answers without them (PEP 562)
_LAZY = {"Decoding": ".settings", "SweepSettings": ".settings", "SweepResult": ".result",
         "recommendation": ".recommend", "run_sweep": ".sweep", "plot_pareto": ".plot"}


__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = ["Decoding", "Judge", "Paired", "Prompt", "Rate", "SweepResult", "SweepSettings", "load_judge",
           "load_prompt_file", "load_prompts", "plot_pareto", "recommend_strength", "recommendation", "run_sweep",
           "wilson_interval"]
