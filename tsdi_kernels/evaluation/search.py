"""Choosing which strengths to evaluate (`auto=True`): a start grid, then `refine_steps` bisections of one interval
each, chosen on the validation split's harmful prompts (only those are generated while refining; every prompt is
answered afterwards):
- refine="threshold" (default): the interval that brackets the margin threshold, i.e. between the largest strength
  still within `margin` of the aligned model's harmful-refusal rate and the next one (this is where the
  recommendation lies); when every grid strength is within the margin, the grid is extended upwards (x2);
- refine="knee": the interval where harmful refusal drops most (the knee of the safety curve).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from .answers import run_configs
from .cache import ResultCache
from .engine import Engine
from .prompts import Prompt
from .recommend import recommend
from .settings import ALIGNED, Config, SweepSettings, tsdi_config

MIN_INTERVAL = 1 / 64  # refinement stops splitting intervals narrower than this


def next_strength(val_rates: dict, aligned_rate: float, margin: float, mode: str = "threshold",
                  min_interval: float = MIN_INTERVAL) -> Optional[float]:
    """The strength to evaluate next (None: nothing left worth refining). See the module docstring."""
    points = [(0.0, aligned_rate)] + sorted((s, r) for s, r in val_rates.items() if s > 0)
    intervals = [(a, b, ra - rb) for (a, ra), (b, rb) in zip(points, points[1:]) if b - a >= 2 * min_interval]
    if mode == "threshold":
        best = recommend({s: r for s, r in points[1:]}, aligned_rate, margin)
        if best is None:
            bracket = (0.0, points[1][0]) if len(points) > 1 else None
        else:
            above = [s for s, _ in points[1:] if s > best]
            bracket = (best, above[0]) if above else None
            if bracket is None:  # every strength within the margin: look further up
                top = points[-1][0]
                return round(2 * top, 6) if top > 0 else 1.0
        if bracket is not None and bracket[1] - bracket[0] >= 2 * min_interval:
            return round((bracket[0] + bracket[1]) / 2, 6)
    elif mode != "knee":
        raise ValueError(f"refine must be 'threshold' or 'knee', got {mode!r}")
    if not intervals:
        return None
    a, b, _ = max(intervals, key=lambda x: (x[2], -x[0]))
    return round((a + b) / 2, 6)


def validation_rates(cache: ResultCache, keys: dict, configs: Sequence[Config], val_harm: Sequence[Prompt],
                     judge) -> dict:
    """{strength (None: aligned): harmful-refusal rate on the validation prompts `val_harm`}."""
    out = {}
    for c in configs:
        refused = sum(judge(cache.get(keys[c.name], p.id)["answer"], p.text) is not None for p in val_harm)
        out[c.strength] = refused / len(val_harm)
    return out


def refine_strengths(engine: Engine, cache: ResultCache, key_of: Callable[[Config], str], prompts: Sequence[Prompt],
                     base: Sequence[float], settings: SweepSettings, judge, *, log=print,
                     progress: bool = True) -> tuple[list[float], list[dict]]:
    """(strengths to evaluate, the refinement's steps): `base`, plus up to settings.refine_steps bisections."""
    strengths = list(base)
    refinement: list[dict] = []
    if not (settings.auto and settings.refine_steps > 0):
        return strengths, refinement
    val_harm = [p for p in prompts if p.label == "harmful" and p.split == "validation"]
    if not val_harm:
        log("no harmful prompts in the validation split: no refinement")
        return strengths, refinement
    run = dict(batch_size=settings.batch_size, helpfulness=False, progress=progress)
    configs = [ALIGNED] + [tsdi_config(s) for s in strengths]
    keys = {c.name: key_of(c) for c in configs}
    log(f"[refine] grid {', '.join(f'{s:g}' for s in strengths)} on {len(val_harm)} harmful validation prompts")
    run_configs(engine, cache, keys, configs, val_harm, **run)
    for step in range(settings.refine_steps):
        val = validation_rates(cache, keys, configs, val_harm, judge)
        aligned_rate = val.pop(None)
        s = next_strength(val, aligned_rate, settings.margin, settings.refine)
        refinement.append({"rates": {f"{k:g}": v for k, v in sorted(val.items())}, "aligned": aligned_rate,
                           "next": s})
        if s is None or s in strengths:
            log(f"[refine] step {step + 1}: nothing left to refine")
            break
        log(f"[refine] step {step + 1}: harmful refusal (validation) aligned {aligned_rate:.3f}, "
            + ", ".join(f"s={k:g} {v:.3f}" for k, v in sorted(val.items())) + f" -> add s={s:g}")
        strengths.append(s)
        configs.append(tsdi_config(s))
        keys[configs[-1].name] = key_of(configs[-1])
        run_configs(engine, cache, keys, [configs[-1]], val_harm, **run)
    return strengths, refinement
