"""Choosing which strengths to evaluate (`auto=True`): a start grid, then up to `refine_steps` bisections, chosen on
the validation split's harmful prompts (only those are generated while refining; every prompt is answered
afterwards). Each strength's loss of harmful refusal is paired against the aligned model (paired.py):
- refine="threshold" (default): the bracket of the recommendation, i.e. between the strength the paired rule
  recommends (recommend.py) and the next evaluated one above it (from 0 when none qualifies), bisected until it
  is at most RESOLUTION wide, so the recommendation is resolved to 1/16 rather than to the grid's step (the grid
  0.25, 0.5, 1, 1.5 needs 2-3 steps); when every strength qualifies, the grid is extended upwards (x2);
- refine="knee": the interval where the loss of harmful refusal rises most (the knee of the safety curve).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

from .answers import run_configs
from .cache import ResultCache
from .engine import Engine
from .paired import Paired, recommend_strength
from .prompts import Prompt
from .recommend import CONFIDENCE
from .settings import ALIGNED, Config, SweepSettings, tsdi_config

RESOLUTION = 1 / 16  # refinement stops splitting intervals this narrow


def next_strength(losses: Mapping[float, Paired], margin: float, mode: str = "threshold",
                  resolution: float = RESOLUTION) -> Optional[float]:
    """The strength to evaluate next (None: nothing left worth refining). See the module docstring.

    losses: {strength: Paired(aligned vs strength) on the harmful validation prompts}."""
    points = sorted(s for s in losses if s > 0)
    if mode == "threshold":
        if not points:
            return None
        best = recommend_strength(losses, margin, CONFIDENCE)["strength"]
        above = [s for s in points if best is None or s > best]
        if not above:  # every strength qualifies: look further up
            return round(2 * points[-1], 6)
        low, high = (0.0 if best is None else best), above[0]
        return round((low + high) / 2, 6) if high - low > resolution else None
    if mode != "knee":
        raise ValueError(f"refine must be 'threshold' or 'knee', got {mode!r}")
    curve = [(0.0, 0.0)] + [(s, losses[s].difference) for s in points]
    rises = [(a, b, lb - la) for (a, la), (b, lb) in zip(curve, curve[1:]) if b - a > resolution]
    if not rises:
        return None
    a, b, _ = max(rises, key=lambda x: (x[2], -x[0]))
    return round((a + b) / 2, 6)


def validation_losses(cache: ResultCache, keys: dict, configs: Sequence[Config], val_harm: Sequence[Prompt],
                      judge) -> dict:
    """{strength: Paired(aligned vs that strength) on the harmful validation prompts `val_harm`}."""
    refused = {c.name: [judge(cache.get(keys[c.name], p.id)["answer"], p.text) is not None for p in val_harm]
               for c in configs}
    return {c.strength: Paired.from_outcomes(refused[ALIGNED.name], refused[c.name])
            for c in configs if c.kind == "tsdi"}


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
        losses = validation_losses(cache, keys, configs, val_harm, judge)
        s = next_strength(losses, settings.margin, settings.refine)
        refinement.append({"losses": {f"{k:g}": {"b": v.b, "c": v.c, "n": v.n,
                                                 "upper_bound": round(v.upper_bound(CONFIDENCE), 6)}
                                      for k, v in sorted(losses.items())}, "next": s})
        if s is None or s in strengths:
            log(f"[refine] step {step + 1}: nothing left to refine")
            break
        log(f"[refine] step {step + 1}: loss of harmful refusal (validation, paired; upper bound) "
            + ", ".join(f"s={k:g} {100 * v.difference:.1f} ({100 * v.upper_bound(CONFIDENCE):.1f})"
                        for k, v in sorted(losses.items())) + f" points -> add s={s:g}")
        strengths.append(s)
        configs.append(tsdi_config(s))
        keys[configs[-1].name] = key_of(configs[-1])
        run_configs(engine, cache, keys, [configs[-1]], val_harm, **run)
    return strengths, refinement
