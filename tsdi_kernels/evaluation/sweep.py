"""The strength sweep behind `tsdi eval`: reference, aligned, and aligned + TSDI over a grid of strengths.

For every configuration and prompt: one answer (greedy, or sampled with a per-prompt seed), judged by a pluggable
refusal rule (judge.py). Per configuration: refusal rates on benign prompts (over-refusal) and harmful prompts
(safety) with 95% Wilson intervals, overall, per split and per category, and a helpfulness proxy beyond "not a
refusal": the reference model's mean per-token log-likelihood of the answer on benign prompts (a fluent, on-topic
answer scores near the reference's own answers; debiasing that breaks the text scores lower).

The pieces, one module each: settings.py (what to evaluate), engine.py (the interface answers come through:
hf_engine.py, vllm_engine.py), cache.py (answers kept per (configuration, prompt) in OUT/cache.jsonl: an
interrupted run continues, a rerun with more strengths generates only what is new), answers.py (batching),
search.py (which strengths, with auto=True), result.py (summary), recommend.py (the recommended strength),
report.py and plot.py (tables, results.json, the Pareto plot).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

from .answers import run_configs
from .cache import CACHE_FILE, ResultCache, bias_fingerprint, config_key, model_fingerprint
from .judge import Judge, load_judge
from .prompts import Prompt
from .recommend import recommendation
from .result import SweepResult, summarize_config
from .search import refine_strengths
from .settings import ALIGNED, REFERENCE, Config, SweepSettings, tsdi_config


def make_engine(aligned, reference, tokenizer, bias, settings: SweepSettings):
    """The Engine settings.decoding.engine names."""
    if settings.decoding.engine == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(aligned, reference, tokenizer, bias, settings.decoding, share_prefill=settings.share_prefill,
                          **asdict(settings.vllm))
    from .hf_engine import HFEngine

    return HFEngine(aligned, reference, tokenizer, bias, settings.decoding, share_prefill=settings.share_prefill)


def run_sweep(aligned, reference, tokenizer, bias, prompts: Sequence[Prompt], settings: SweepSettings, *,
              judge=None, out_dir=None, progress: bool = True, log: Callable[[str], None] = print) -> SweepResult:
    """Evaluate reference, aligned and aligned + TSDI (see the module docstring); returns a SweepResult.

    bias: a BiasTable or its [L, V] mean. judge: a Judge, a callable or a spec (judge.load_judge; None: the
    built-in rule). out_dir: where cache.jsonl lives (None: no cache)."""
    from ..integrations.hf import bias_tensor

    judge = load_judge(judge) if not isinstance(judge, Judge) else judge
    base = settings.check()
    prompts = list(prompts)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    cache = ResultCache(Path(out_dir) / CACHE_FILE if out_dir is not None else None)
    if cache.records:
        log(f"resuming: {len(cache.records)} cached answers in {cache.path}"
            + (f" ({cache.skipped} unreadable lines skipped)" if cache.skipped else ""))
    engine = make_engine(aligned, reference, tokenizer, bias, settings)
    with contextlib.closing(engine):  # vLLM engines hold processes and memory until closed
        fps = {"aligned": model_fingerprint(aligned), "reference": model_fingerprint(reference)}
        bias_fp = bias_fingerprint(bias_tensor(bias))

        def key_of(c: Config) -> str:
            return config_key(c, models=fps, bias_fp=bias_fp, decoding=settings.decoding)

        t_start = time.perf_counter()
        strengths, refinement = refine_strengths(engine, cache, key_of, prompts, base, settings, judge, log=log,
                                                 progress=progress)
        configs = [REFERENCE, ALIGNED] + [tsdi_config(s) for s in sorted(strengths)]
        keys = {c.name: key_of(c) for c in configs}
        log(f"[eval] {len(configs)} configurations x {len(prompts)} prompts")
        generated = run_configs(engine, cache, keys, configs, prompts, batch_size=settings.batch_size,
                                helpfulness=settings.helpfulness, progress=progress)
        total_s = time.perf_counter() - t_start

        # judge every answer (verdicts are not cached: a new judge re-judges the cached answers)
        records = {}
        for c in configs:
            for p in prompts:
                rec = dict(cache.get(keys[c.name], p.id))
                rec["refusal"] = judge(rec["answer"], p.text)
                records[(c.name, p.id)] = rec
        if settings.helpfulness and any(records[(c.name, p.id)].get("loglik") is None
                                        and records[(c.name, p.id)]["tokens"]
                                        for c in configs for p in prompts if p.label == "benign"):
            log("note: some cached benign answers were generated without --helpfulness scoring; their log-likelihood "
                "is missing from the means")

        result = SweepResult(configs=configs, prompts=prompts, records=records, keys=keys, judge=judge.name,
                             refinement=refinement,
                             settings={**settings.describe(strengths), "models": fps, "bias": bias_fp,
                                       "bias_metadata": _jsonable(getattr(bias, "metadata", {}))})
        result.summary = [summarize_config(records, c, prompts) for c in configs]
        result.recommendation = recommendation(result, settings.margin)
        result.timings = {"total": round(total_s, 1), "model_time": round(engine.seconds, 1),
                          **{k: round(v, 1) for k, v in engine.phases.items()}, "generated": generated,
                          "answer_tokens": engine.tokens}
        return result


def _jsonable(meta) -> dict:
    try:
        return json.loads(json.dumps(dict(meta or {}), default=str))
    except (TypeError, ValueError):
        return {}
