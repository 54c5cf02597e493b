"""Answering in batches: every (configuration, prompt) pair not yet in the cache, generated (and, for benign prompts,
scored) through an Engine and appended to the cache after each batch."""
from __future__ import annotations

import math
import time
from typing import Sequence

from .cache import ResultCache
from .engine import Engine
from .prompts import LABELS, Prompt
from .settings import Config


def batches(engine: Engine, prompts: Sequence[Prompt], batch_size: int, group=lambda p: None) -> list[list[Prompt]]:
    """Batches of one label each (only benign answers are scored) and one `group` each (the configurations a prompt
    still needs), prompts of similar length together, batch sizes balanced (150 prompts at batch size 64 give 3
    batches of 50, not 64 + 64 + 22: a decoding step costs nearly as much for 22 rows as for 64)."""
    out = []
    groups: dict = {}
    for p in prompts:
        groups.setdefault((p.label, group(p)), []).append(p)
    for (label, _), sel in sorted(groups.items(), key=lambda kv: (LABELS.index(kv[0][0]), str(kv[0][1]))):
        lengths = {p.id: len(engine.tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in sel}
        sel.sort(key=lambda p: (lengths[p.id], p.id))
        n = math.ceil(len(sel) / batch_size)
        bounds = [round(i * len(sel) / n) for i in range(n + 1)]
        out += [sel[a:b] for a, b in zip(bounds, bounds[1:])]
    return out


def run_configs(engine: Engine, cache: ResultCache, keys: dict, configs: Sequence[Config], prompts: Sequence[Prompt],
                *, batch_size: int, helpfulness: bool, progress: bool = True) -> int:
    """Generate (and score) every (config, prompt) pair not in the cache; returns how many were generated."""
    from tqdm.auto import tqdm

    todo = [(c, p) for c in configs for p in prompts if not cache.has(keys[c.name], p.id)]
    if not todo:
        return 0
    missing = {}
    for c, p in todo:
        missing.setdefault(p.id, []).append(c.name)
    prompts = [p for p in prompts if p.id in missing]
    bar = tqdm(total=len(todo), desc="answers", unit="answer", disable=not progress, dynamic_ncols=True)
    try:
        # prompts that need the same configurations are batched together: no row is generated twice
        for batch in batches(engine, prompts, batch_size, group=lambda p: tuple(missing[p.id])):
            need = [c for c in configs if any(not cache.has(keys[c.name], p.id) for p in batch)]
            if not need:
                continue
            enc = engine.encode(batch)
            score = helpfulness and batch[0].label == "benign"
            prefills = {}
            for role in ("reference", "aligned"):
                if any(c.role == role for c in need) or (role == "reference" and score):
                    t0 = time.perf_counter()
                    prefills[role] = engine.prefill(role, enc)
                    engine.seconds += time.perf_counter() - t0
                    engine.phases["prefill"] += time.perf_counter() - t0
            new: list[dict] = []
            for role in ("reference", "aligned"):
                group = [c for c in need if c.role == role]
                if not group:
                    continue
                bar.set_description(f"{group[0].name if len(group) == 1 else role + ' x' + str(len(group)):>14}")
                answers = engine.generate_many(group, batch, enc, prefills.get(role), batch_size=batch_size)
                for c in group:
                    for p, o in zip(batch, answers[c.name]):
                        if not cache.has(keys[c.name], p.id):
                            new.append({"config": keys[c.name], "name": c.name, "prompt_id": p.id, **o})
                    bar.update(sum(not cache.has(keys[c.name], p.id) for p in batch))
            if score and new:
                # score each distinct (prompt row, answer) once: configurations often agree
                row_of = {p.id: i for i, p in enumerate(batch)}
                unique: dict[tuple, int] = {}
                for r in new:
                    unique.setdefault((row_of[r["prompt_id"]], tuple(r["tokens"])), len(unique))
                pairs = list(unique)
                bar.set_description("   log-lik")
                values = engine.score(enc, [i for i, _ in pairs], [t for _, t in pairs], prefills.get("reference"))
                for r in new:
                    r["loglik"] = values[unique[(row_of[r["prompt_id"]], tuple(r["tokens"]))]]
            cache.add(new)
    finally:
        bar.close()
    return len(todo)
