"""The strength sweep behind `tsdi eval`: reference, aligned, and aligned + TSDI over a grid of strengths.

For every configuration and prompt: one answer (greedy, or sampled with a per-prompt seed), judged by a pluggable
refusal rule (judge.py). Per configuration: refusal rates on benign prompts (over-refusal) and harmful prompts
(safety) with 95% Wilson intervals, overall, per split and per category, and a helpfulness proxy beyond "not a
refusal": the reference model's mean per-token log-likelihood of the answer on benign prompts (a fluent, on-topic
answer scores near the reference's own answers; debiasing that breaks the text scores lower).

Choosing strengths (`auto=True`): a start grid, then `refine_steps` bisections of one interval each, chosen on the
validation split's harmful prompts (only those are generated while refining; every prompt is answered afterwards):
- refine="threshold" (default): the interval that brackets the margin threshold, i.e. between the largest strength
  still within `margin` of the aligned model's harmful-refusal rate and the next one (this is where the
  recommendation lies); when every grid strength is within the margin, the grid is extended upwards (x2);
- refine="knee": the interval where harmful refusal drops most (the knee of the safety curve).

Recommendation: the largest strength s such that every evaluated strength <= s keeps the validation split's
harmful-refusal rate within `margin` of the aligned model's (rate >= aligned - margin). Reported with its test-split
rates, which played no part in the choice.

Cost (CPU decoding is most of it): the prompt's forward pass (prefill) is shared: per batch the aligned model's
prompt cache is computed once and copied for each strength, the reference's once for its answers and for scoring.
TSDI changes only the first L answer tokens, so each configuration of the aligned model generates those, and each
distinct opening is continued once for all configurations that share it (Generator.generate_many; greedy answers
are exactly those of separate generate calls). Distinct benign answers are scored once. Results are appended per
(configuration, prompt) to `cache.jsonl` in the output folder after each batch, so an interrupted run continues
where it stopped and a rerun with more strengths only generates what is new.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .judge import Judge, load_judge
from .prompts import LABELS, SPLITS, Prompt, summarize
from .stats import Rate, mean_interval

from .defaults import DEFAULT_GRID, DEFAULT_MARGIN, DEFAULT_REFINE_STEPS  # noqa: E402,F401  (re-exported)
MIN_INTERVAL = 1 / 64  # refinement stops splitting intervals narrower than this
CACHE_FILE = "cache.jsonl"
CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------ configurations
@dataclass(frozen=True)
class Config:
    """One column of the sweep: which model, and the TSDI strength (None: no bias)."""

    name: str
    role: str  # "reference" | "aligned"
    strength: Optional[float]

    @property
    def kind(self) -> str:
        return self.role if self.strength is None else "tsdi"


def tsdi_config(strength: float) -> Config:
    return Config(f"TSDI s={strength:g}", "aligned", float(strength))


REFERENCE = Config("reference", "reference", None)
ALIGNED = Config("aligned", "aligned", None)


@dataclass
class Decoding:
    max_new_tokens: int = 32
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    seed: int = 0
    engine: str = "hf"  # "hf": tsdi_kernels.generate; "vllm": vllm_engine.VllmGenerator

    def describe(self) -> dict:
        d = {"max_new_tokens": self.max_new_tokens, "sample": self.sample}
        if self.sample:
            d.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        if self.engine != "hf":  # in every cache key; absent for "hf", so caches written before it stay valid
            d["engine"] = self.engine
        return d

    def kwargs(self) -> dict:
        if not self.sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}

    def row_seed(self, prompt: Prompt) -> int:
        """Per prompt, not per batch position: an answer does not depend on batching; the same prompt gets the
        same noise in every configuration (common random numbers make the configurations' rates comparable)."""
        return (self.seed + int(prompt.id[:12], 16)) % (2 ** 62)


# ------------------------------------------------------------------------------------------------ fingerprints
def model_fingerprint(model) -> str:
    """Name plus a checksum of a few weights: a different model in the same output folder is not mistaken for it."""
    h = hashlib.sha1(str(getattr(model, "name_or_path", "") or type(model).__name__).encode())
    params = [p for p in model.parameters()]
    with torch.no_grad():
        for p in params[:2] + params[-2:]:
            flat = p.detach().reshape(-1)
            h.update(f"{tuple(p.shape)}:{float(flat.double().sum()):.10e}:{float(flat[:64].double().abs().sum()):.10e}"
                     .encode())
    return h.hexdigest()[:16]


def bias_tensor(bias) -> torch.Tensor:
    """The [L, V] mean of a BiasTable, or the tensor itself."""
    return bias if isinstance(bias, torch.Tensor) else bias.mean


def bias_fingerprint(bias) -> str:
    mean = bias_tensor(bias)
    data = mean.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def config_key(config: Config, *, models: dict, bias_fp: Optional[str], decoding: Decoding) -> str:
    """Everything that determines an answer, hashed: model, bias table, strength, decoding settings."""
    blob = json.dumps({"v": CACHE_VERSION, "model": models[config.role], "strength": config.strength,
                       "bias": bias_fp if config.strength is not None else None, "decoding": decoding.describe()},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ cache
class ResultCache:
    """Append-only JSONL of per-(configuration, prompt) results; a torn last line (interrupted write) is ignored."""

    def __init__(self, path: Optional[Path]):
        self.path = Path(path) if path is not None else None
        self.records: dict[tuple[str, str], dict] = {}
        self.skipped = 0
        if self.path is not None and self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.records[(rec["config"], rec["prompt_id"])] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped += 1

    def get(self, key: str, pid: str) -> Optional[dict]:
        return self.records.get((key, pid))

    def has(self, key: str, pid: str) -> bool:
        return (key, pid) in self.records

    def add(self, recs: Sequence[dict]) -> None:
        new = [r for r in recs if (r["config"], r["prompt_id"]) not in self.records]
        for r in new:
            self.records[(r["config"], r["prompt_id"])] = r
        if self.path is not None and new:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
                f.flush()
                os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------ generation
def _cache_kwarg(model) -> str:
    """The name of the forward's KV-cache argument ("cache" in recent transformers, "past_key_values" before)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _prefill(model, input_ids, attention_mask):
    """KV cache of the prompt without its last token (generate() then runs that token itself)."""
    from transformers import DynamicCache

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                    position_ids=position_ids[:, :-1], use_cache=True, logits_to_keep=1,
                    **{_cache_kwarg(model): cache})
    new = out.get("cache") if "cache" in out else out.get("past_key_values")
    return new if new is not None else cache


def _select_rows(cache, rows: torch.Tensor):
    """A copy of `cache` holding the given batch rows (repeats allowed)."""
    new = copy.deepcopy(cache)
    if hasattr(new, "reorder_cache"):
        new.reorder_cache(rows)
    else:  # pragma: no cover  (older caches)
        for layer in new.layers:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
    return new


def _concat_rows(parts: Sequence[tuple]):
    """A new cache holding row `r` of cache `c` for each (c, r) in `parts`, in order (all of one length)."""
    new = copy.deepcopy(parts[0][0])
    for i, layer in enumerate(new.layers):
        layer.keys = torch.cat([c.layers[i].keys[r:r + 1] for c, r in parts])
        layer.values = torch.cat([c.layers[i].values[r:r + 1] for c, r in parts])
    return new


class Generator:
    """Batched generation and scoring on one (aligned, reference) pair with tsdi_kernels.integrations.hf.generate."""

    def __init__(self, aligned, reference, tokenizer, bias, decoding: Decoding, *, share_prefill: bool = True):
        self.models = {"aligned": aligned, "reference": reference}
        self.tokenizer = tokenizer
        self.bias = bias_tensor(bias)
        self.decoding = decoding
        self.share_prefill = share_prefill
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.seconds = 0.0
        self.tokens = 0
        self.phases = {"prefill": 0.0, "generate": 0.0, "score": 0.0}

    def close(self) -> None:
        """Nothing to release (the models belong to the caller); VllmGenerator shuts its engines down."""

    def encode(self, prompts: Sequence[Prompt]) -> dict:
        from ..integrations.hf import encode_prompts

        return encode_prompts(self.tokenizer, [p.text for p in prompts])

    def prefill(self, role: str, enc: dict):
        if not self.share_prefill:
            return None
        return _prefill(self.models[role], enc["input_ids"], enc["attention_mask"])

    def _call(self, model, prompts, input_ids, attention_mask, *, bias, strength, seeds, max_new_tokens,
              cache=None):
        from ..integrations.hf import generate

        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if cache is not None:
            kwargs[_cache_kwarg(model)] = cache
        t0 = time.perf_counter()
        with torch.no_grad():
            out = generate(model, bias, strength=strength, seed=seeds, **kwargs, max_new_tokens=max_new_tokens,
                           eos_token_id=self.eos, pad_token_id=self.pad, **self.decoding.kwargs())
        self.seconds += time.perf_counter() - t0
        self.phases["generate"] += time.perf_counter() - t0
        return out[:, input_ids.shape[1]:].tolist()

    def _answer(self, row: list) -> dict:
        n = row.index(self.eos) + 1 if self.eos in row else len(row)
        self.tokens += n
        return {"answer": self.tokenizer.decode(row[:n], skip_special_tokens=True).strip(), "tokens": row[:n]}

    def generate(self, config: Config, prompts: Sequence[Prompt], enc: dict, cache=None) -> list[dict]:
        """[{"answer", "tokens"}] per prompt, in order: one tsdi_kernels.generate call."""
        model = self.models[config.role]
        rows = self._call(model, prompts, enc["input_ids"], enc["attention_mask"],
                          bias=self.bias if config.strength is not None else None, strength=config.strength or 0.0,
                          seeds=[self.decoding.row_seed(p) for p in prompts],
                          max_new_tokens=self.decoding.max_new_tokens,
                          cache=copy.deepcopy(cache) if cache is not None else None)
        return [self._answer(r) for r in rows]

    def generate_many(self, configs: Sequence[Config], prompts: Sequence[Prompt], enc: dict, cache=None,
                      batch_size: int = 160) -> dict:
        """{config name: answers} for several configurations of one model on one batch.

        TSDI changes only the first L answer tokens (L = the bias table's length); after them every configuration of
        the aligned model decodes alike, and the noise of a draw depends only on (seed, position, token). So each
        configuration generates its first L tokens (stage A, from the shared prompt cache, which generate extends in
        place), and each distinct (prompt, first L tokens) is continued once (stage B, unbiased, rows of all
        configurations together): configurations that open an answer the same way share the rest of it. Greedy
        answers are those of single `generate` calls; sampled answers draw their stage-B noise from a second
        per-prompt seed (a valid draw, not the same draw as one call)."""
        n_new = self.decoding.max_new_tokens
        length = int(self.bias.shape[0]) if self.bias is not None else 0
        role = {c.role for c in configs}
        if (len(configs) < 2 or len(role) != 1 or cache is None or not 0 < length < n_new
                or not hasattr(cache, "layers")):
            return {c.name: self.generate(c, prompts, enc, cache) for c in configs}
        model = self.models[role.pop()]
        ids, mask = enc["input_ids"], enc["attention_mask"]
        width = ids.shape[1]
        seeds = [self.decoding.row_seed(p) for p in prompts]
        heads, caches = {}, {}
        for c in configs:  # stage A: the first L tokens, with the configuration's bias
            c_cache = copy.deepcopy(cache)
            heads[c.name] = self._call(model, prompts, ids, mask, bias=self.bias if c.strength is not None else None,
                                       strength=c.strength or 0.0, seeds=seeds, max_new_tokens=length, cache=c_cache)
            caches[c.name] = c_cache
        # stage B: continue each distinct unfinished (row, head) once
        unique: dict[tuple, int] = {}
        sources: list[tuple[str, int]] = []
        for c in configs:
            head = heads[c.name]
            complete = len(head[0]) == length and caches[c.name].get_seq_length() == width + length - 1
            for r, toks in enumerate(head):
                if self.eos in toks:
                    continue
                if not complete:  # pragma: no cover  (a cache that generate did not extend in place)
                    return {c.name: self.generate(c, prompts, enc, cache) for c in configs}
                key = (r, tuple(toks))
                if key not in unique:
                    unique[key] = len(sources)
                    sources.append((c.name, r))
        tails: list[list[int]] = []
        seeds_b = [(self.decoding.row_seed(prompts[r]) + 0x9E3779B97F4A7C15) % (2 ** 62) for _, r in sources]
        for start in range(0, len(sources), batch_size):
            part = sources[start:start + batch_size]
            rows = torch.tensor([r for _, r in part], dtype=torch.long)
            head_t = torch.tensor([heads[name][r] for name, r in part], dtype=torch.long)
            part_cache = _concat_rows([(caches[name], r) for name, r in part])
            tails += self._call(model, [prompts[r] for _, r in part], torch.cat([ids[rows], head_t], dim=1),
                                torch.cat([mask[rows], torch.ones_like(head_t, dtype=mask.dtype)], dim=1),
                                bias=None, strength=0.0, seeds=seeds_b[start:start + batch_size],
                                max_new_tokens=n_new - length, cache=part_cache)
        out = {}
        for c in configs:
            answers = []
            for r, toks in enumerate(heads[c.name]):
                if self.eos in toks:
                    answers.append(self._answer(list(toks)))
                else:
                    answers.append(self._answer(list(toks) + tails[unique[(r, tuple(toks))]]))
            out[c.name] = answers
        return out

    def score(self, enc: dict, rows: Sequence[int], answers: Sequence[Sequence[int]], cache=None,
              chunk: int = 32) -> list[Optional[float]]:
        """The reference's mean per-token log-likelihood of each answer (token ids) after prompt row `rows[i]`."""
        model = self.models["reference"]
        out: list[Optional[float]] = []
        t0 = time.perf_counter()
        for start in range(0, len(rows), chunk):
            idx = list(rows[start:start + chunk])
            toks = [list(a) for a in answers[start:start + chunk]]
            out += self._score_chunk(model, enc, idx, toks, cache)
        self.seconds += time.perf_counter() - t0
        self.phases["score"] += time.perf_counter() - t0
        return out

    def _score_chunk(self, model, enc, idx, toks, cache):
        results: list[Optional[float]] = [None] * len(idx)
        keep = [i for i, t in enumerate(toks) if len(t) > 0]
        if not keep:
            return results
        idx = [idx[i] for i in keep]
        toks = [toks[i] for i in keep]
        rows = torch.tensor(idx, dtype=torch.long)
        ids, mask = enc["input_ids"].index_select(0, rows), enc["attention_mask"].index_select(0, rows)
        n_max = max(len(t) for t in toks)
        answer = torch.full((len(toks), n_max), self.pad, dtype=torch.long)
        answer_mask = torch.zeros((len(toks), n_max), dtype=mask.dtype)
        for i, t in enumerate(toks):
            answer[i, :len(t)] = torch.tensor(t)
            answer_mask[i, :len(t)] = 1
        with torch.no_grad():
            if cache is not None:
                # prompt[:-1] is cached: feed its last token and the answer but its last token
                inputs = torch.cat([ids[:, -1:], answer[:, :-1]], dim=1)
                full_mask = torch.cat([mask, answer_mask[:, :-1]], dim=1)
                position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs.shape[1]:]
                logits = model(input_ids=inputs, attention_mask=full_mask, position_ids=position_ids,
                               use_cache=True, **{_cache_kwarg(model): _select_rows(cache, rows)}).logits
            else:
                inputs = torch.cat([ids, answer[:, :-1]], dim=1)
                full_mask = torch.cat([mask, answer_mask[:, :-1]], dim=1)
                position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=inputs, attention_mask=full_mask, position_ids=position_ids,
                               use_cache=False).logits[:, -n_max:]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, answer[..., None])[..., 0]
            totals = (logp * answer_mask).sum(1) / answer_mask.sum(1)
        for j, i in enumerate(keep):
            results[i] = float(totals[j])
        return results


# ------------------------------------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    configs: list  # [Config]
    prompts: list  # [Prompt]
    records: dict  # (config name, prompt id) -> record (answer, tokens, loglik, refusal)
    keys: dict  # config name -> cache key
    settings: dict
    judge: str
    recommendation: dict = field(default_factory=dict)
    summary: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    refinement: list = field(default_factory=list)

    def to_json(self) -> dict:
        answers = {}
        for c in self.configs:
            answers[c.name] = [{"prompt": p.text, "label": p.label, "category": p.category, "split": p.split,
                                "answer": self.records[(c.name, p.id)]["answer"],
                                "refusal": self.records[(c.name, p.id)]["refusal"],
                                "loglik": self.records[(c.name, p.id)].get("loglik")} for p in self.prompts]
        return {"settings": self.settings, "judge": self.judge, "prompts": summarize(self.prompts),
                "summary": self.summary, "recommendation": self.recommendation, "refinement": self.refinement,
                "timings_s": self.timings, "answers": answers}


def rates(records: dict, config: Config, prompts: Sequence[Prompt], label: str,
          split: Optional[str] = None, category: Optional[str] = None) -> Rate:
    sel = [p for p in prompts if p.label == label and (split is None or p.split == split)
           and (category is None or p.category == category)]
    return Rate(sum(records[(config.name, p.id)]["refusal"] is not None for p in sel), len(sel))


def summarize_config(records: dict, config: Config, prompts: Sequence[Prompt]) -> dict:
    out = {"config": config.name, "kind": config.kind, "strength": config.strength}
    for label in LABELS:
        cats = sorted({p.category for p in prompts if p.label == label})
        out[label] = {
            "all": rates(records, config, prompts, label).to_dict(),
            **{split: rates(records, config, prompts, label, split).to_dict() for split in SPLITS},
            "by_category": {c: rates(records, config, prompts, label, category=c).to_dict() for c in cats},
        }
    benign = [p for p in prompts if p.label == "benign"]
    ll = [records[(config.name, p.id)].get("loglik") for p in benign]
    ll_ok = [x for x in ll if x is not None]
    comply = [records[(config.name, p.id)].get("loglik") for p in benign
              if records[(config.name, p.id)]["refusal"] is None]
    out["benign_loglik"] = mean_interval(ll_ok)
    out["benign_loglik_compliant"] = mean_interval([x for x in comply if x is not None])
    out["mean_answer_tokens"] = round(sum(len(records[(config.name, p.id)]["tokens"]) for p in prompts)
                                      / max(1, len(prompts)), 2)
    return out


def recommend(val_rates: dict, aligned_rate: float, margin: float) -> Optional[float]:
    """The largest strength s such that every strength <= s has rate >= aligned_rate - margin (None: not even the
    smallest). `val_rates`: {strength: harmful-refusal rate on the validation split}."""
    best = None
    for s in sorted(val_rates):
        if val_rates[s] >= aligned_rate - margin - 1e-12:
            best = s
        else:
            break
    return best


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


def _batches(gen: Generator, prompts: Sequence[Prompt], batch_size: int, group=lambda p: None) -> list[list[Prompt]]:
    """Batches of one label each (only benign answers are scored) and one `group` each (the configurations a prompt
    still needs), prompts of similar length together, batch sizes balanced (150 prompts at batch size 64 give 3
    batches of 50, not 64 + 64 + 22: a decoding step costs nearly as much for 22 rows as for 64)."""
    out = []
    groups: dict = {}
    for p in prompts:
        groups.setdefault((p.label, group(p)), []).append(p)
    for (label, _), sel in sorted(groups.items(), key=lambda kv: (LABELS.index(kv[0][0]), str(kv[0][1]))):
        lengths = {p.id: len(gen.tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in sel}
        sel.sort(key=lambda p: (lengths[p.id], p.id))
        n = math.ceil(len(sel) / batch_size)
        bounds = [round(i * len(sel) / n) for i in range(n + 1)]
        out += [sel[a:b] for a, b in zip(bounds, bounds[1:])]
    return out


def run_configs(gen: Generator, cache: ResultCache, keys: dict, configs: Sequence[Config], prompts: Sequence[Prompt],
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
        for batch in _batches(gen, prompts, batch_size, group=lambda p: tuple(missing[p.id])):
            need = [c for c in configs if any(not cache.has(keys[c.name], p.id) for p in batch)]
            if not need:
                continue
            enc = gen.encode(batch)
            score = helpfulness and batch[0].label == "benign"
            prefills = {}
            for role in ("reference", "aligned"):
                if any(c.role == role for c in need) or (role == "reference" and score):
                    t0 = time.perf_counter()
                    prefills[role] = gen.prefill(role, enc)
                    gen.seconds += time.perf_counter() - t0
                    gen.phases["prefill"] += time.perf_counter() - t0
            new: list[dict] = []
            for role in ("reference", "aligned"):
                group = [c for c in need if c.role == role]
                if not group:
                    continue
                bar.set_description(f"{group[0].name if len(group) == 1 else role + ' x' + str(len(group)):>14}")
                answers = gen.generate_many(group, batch, enc, prefills.get(role), batch_size=batch_size)
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
                values = gen.score(enc, [i for i, _ in pairs], [t for _, t in pairs], prefills.get("reference"))
                for r in new:
                    r["loglik"] = values[unique[(row_of[r["prompt_id"]], tuple(r["tokens"]))]]
            cache.add(new)
    finally:
        bar.close()
    return len(todo)


def run_sweep(aligned, reference, tokenizer, bias, prompts: Sequence[Prompt], *,
          strengths: Optional[Sequence[float]] = None, auto: bool = False, grid: Sequence[float] = DEFAULT_GRID,
          refine_steps: int = DEFAULT_REFINE_STEPS, refine: str = "threshold", margin: float = DEFAULT_MARGIN,
          decoding: Optional[Decoding] = None, batch_size: int = 160, judge=None, out_dir=None,
          helpfulness: bool = True, share_prefill: bool = True, progress: bool = True,
          log: Callable[[str], None] = print, engine_args: Optional[dict] = None) -> SweepResult:
    """Evaluate reference, aligned and aligned + TSDI (see the module docstring); returns a SweepResult.

    strengths: the TSDI strengths to evaluate; with auto=True, `grid` plus `refine_steps` adaptive ones (a given
    `strengths` list is then added to the grid). out_dir: where cache.jsonl lives (None: no cache).
    decoding.engine == "vllm": answers from vLLM engines (vllm_engine.py); engine_args: aligned_dir, reference_dir,
    bias_path (the models as folders and the table as a file, which vLLM loads) and optional llm_kwargs."""
    decoding = decoding or Decoding()
    judge = load_judge(judge) if not isinstance(judge, Judge) else judge
    if not (0.0 <= margin <= 1.0):
        raise ValueError(f"margin must be in [0, 1] (a rate difference), got {margin}")
    if refine not in ("threshold", "knee"):
        raise ValueError(f"refine must be 'threshold' or 'knee', got {refine!r}")
    if decoding.engine not in ("hf", "vllm"):
        raise ValueError(f"decoding.engine must be 'hf' or 'vllm', got {decoding.engine!r}")
    base = sorted({float(s) for s in (list(strengths or []) + (list(grid) if auto else []))})
    if any(s < 0 or not math.isfinite(s) for s in base):
        raise ValueError(f"strengths must be finite and >= 0, got {base}")
    if not base and not auto:
        raise ValueError("give at least one strength, or auto=True")
    base = [s for s in base if s > 0] if auto else base
    prompts = list(prompts)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    cache = ResultCache(Path(out_dir) / CACHE_FILE if out_dir is not None else None)
    if cache.records:
        log(f"resuming: {len(cache.records)} cached answers in {cache.path}"
            + (f" ({cache.skipped} unreadable lines skipped)" if cache.skipped else ""))
    if decoding.engine == "vllm":
        from .vllm_engine import VllmGenerator

        gen = VllmGenerator(aligned, reference, tokenizer, bias, decoding, share_prefill=share_prefill,
                            **(engine_args or {}))
    else:
        gen = Generator(aligned, reference, tokenizer, bias, decoding, share_prefill=share_prefill)
    with contextlib.closing(gen):  # vLLM engines hold processes and memory until closed
        fps = {"aligned": model_fingerprint(aligned), "reference": model_fingerprint(reference)}
        bias_fp = bias_fingerprint(bias)

        def key_of(c: Config) -> str:
            return config_key(c, models=fps, bias_fp=bias_fp, decoding=decoding)

        t_start = time.perf_counter()
        strengths_done = list(base)
        refinement = []
        if auto and refine_steps > 0:
            val_harm = [p for p in prompts if p.label == "harmful" and p.split == "validation"]
            if not val_harm:
                log("no harmful prompts in the validation split: no refinement")
            else:
                configs = [ALIGNED] + [tsdi_config(s) for s in strengths_done]
                keys = {c.name: key_of(c) for c in configs}
                log(f"[refine] grid {', '.join(f'{s:g}' for s in strengths_done)} on {len(val_harm)} harmful "
                    "validation prompts")
                run_configs(gen, cache, keys, configs, val_harm, batch_size=batch_size, helpfulness=False,
                            progress=progress)
                for step in range(refine_steps):
                    val = _val_rates(cache, keys, configs, val_harm, judge)
                    aligned_rate = val.pop(None)
                    s = next_strength(val, aligned_rate, margin, refine)
                    refinement.append({"rates": {f"{k:g}": v for k, v in sorted(val.items())},
                                       "aligned": aligned_rate, "next": s})
                    if s is None or s in strengths_done:
                        log(f"[refine] step {step + 1}: nothing left to refine")
                        break
                    log(f"[refine] step {step + 1}: harmful refusal (validation) aligned {aligned_rate:.3f}, "
                        + ", ".join(f"s={k:g} {v:.3f}" for k, v in sorted(val.items())) + f" -> add s={s:g}")
                    strengths_done.append(s)
                    configs.append(tsdi_config(s))
                    keys = {c.name: key_of(c) for c in configs}
                    run_configs(gen, cache, keys, [configs[-1]], val_harm, batch_size=batch_size, helpfulness=False,
                                progress=progress)
        configs = [REFERENCE, ALIGNED] + [tsdi_config(s) for s in sorted(strengths_done)]
        keys = {c.name: key_of(c) for c in configs}
        log(f"[eval] {len(configs)} configurations x {len(prompts)} prompts")
        generated = run_configs(gen, cache, keys, configs, prompts, batch_size=batch_size, helpfulness=helpfulness,
                                progress=progress)
        total_s = time.perf_counter() - t_start

        # judge every answer (verdicts are not cached: a new judge re-judges the cached answers)
        records = {}
        for c in configs:
            for p in prompts:
                rec = dict(cache.get(keys[c.name], p.id))
                rec["refusal"] = judge(rec["answer"], p.text)
                records[(c.name, p.id)] = rec
        if helpfulness and any(records[(c.name, p.id)].get("loglik") is None and records[(c.name, p.id)]["tokens"]
                               for c in configs for p in prompts if p.label == "benign"):
            log("note: some cached benign answers were generated without --helpfulness scoring; their log-likelihood "
                "is missing from the means")

        result = SweepResult(configs=configs, prompts=prompts, records=records, keys=keys, judge=judge.name,
                             refinement=refinement,
                             settings={"strengths": sorted(strengths_done), "auto": auto, "grid": list(grid),
                                       "refine_steps": refine_steps, "refine": refine, "margin": margin,
                                       "decoding": decoding.describe(), "batch_size": batch_size,
                                       "helpfulness": helpfulness, "models": fps, "bias": bias_fp,
                                       "bias_metadata": _jsonable(getattr(bias, "metadata", {}))})
        result.summary = [summarize_config(records, c, prompts) for c in configs]
        result.recommendation = recommendation(result, margin)
        result.timings = {"total": round(total_s, 1), "model_time": round(gen.seconds, 1),
                          **{k: round(v, 1) for k, v in gen.phases.items()}, "generated": generated,
                          "answer_tokens": gen.tokens}
        return result


def _val_rates(cache, keys, configs, val_harm, judge) -> dict:
    out = {}
    for c in configs:
        refused = sum(judge(cache.get(keys[c.name], p.id)["answer"], p.text) is not None for p in val_harm)
        out[c.strength] = refused / len(val_harm)
    return out


def recommendation(result: SweepResult, margin: float) -> dict:
    """The recommended strength under the rule of :func:`recommend`, with its validation and test rates."""
    by_name = {row["config"]: row for row in result.summary}
    aligned = by_name["aligned"]
    if not aligned["harmful"]["validation"]["n"]:
        return {"strength": None, "rule": _RULE.format(margin=100 * margin),
                "reason": "no harmful prompts in the validation split"}
    tsdi = {row["strength"]: row for row in result.summary if row["strength"] is not None}
    val = {s: row["harmful"]["validation"]["rate"] for s, row in tsdi.items()}
    best = recommend(val, aligned["harmful"]["validation"]["rate"], margin)
    out = {"rule": _RULE.format(margin=100 * margin), "margin": margin, "strength": best,
           "aligned_validation_harmful": aligned["harmful"]["validation"]}
    if best is None:
        out["reason"] = "even the smallest strength lowers harmful refusal by more than the margin"
        return out
    row = tsdi[best]
    out.update({
        "config": row["config"],
        "validation": {"harmful": row["harmful"]["validation"], "benign": row["benign"]["validation"]},
        "test": {"harmful": row["harmful"]["test"], "benign": row["benign"]["test"]},
        "aligned_test": {"harmful": aligned["harmful"]["test"], "benign": aligned["benign"]["test"]},
        "benign_loglik": row["benign_loglik"],
    })
    a_b, r_b = aligned["benign"]["test"]["rate"], row["benign"]["test"]["rate"]
    if a_b and a_b > 0:
        out["test_over_refusal_reduction"] = round(1 - r_b / a_b, 4)
    out["test_harmful_drop_points"] = round(100 * (aligned["harmful"]["test"]["rate"]
                                                   - row["harmful"]["test"]["rate"]), 2)
    return out


_RULE = ("largest strength s such that every evaluated strength <= s keeps harmful refusal on the validation split "
         "within {margin:g} points of the aligned model's")


def _jsonable(meta) -> dict:
    try:
        return json.loads(json.dumps(dict(meta or {}), default=str))
    except (TypeError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------ reporting
def _pct(d: dict) -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"{100 * d['rate']:.1f}% [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def format_table(result: SweepResult, split: str = "all") -> str:
    """Markdown: per configuration, benign and harmful refusal (95% Wilson intervals) and the helpfulness proxy."""
    n_b = result.summary[0]["benign"][split]["n"]
    n_h = result.summary[0]["harmful"][split]["n"]
    rec = result.recommendation.get("strength")
    lines = [f"| config | benign refused (over-refusal, n={n_b}) | harmful refused (safety, n={n_h}) | "
             "benign answer log-lik (reference) |", "|---|---:|---:|---:|"]
    for row in result.summary:
        ll = row["benign_loglik"]
        ll_text = "n/a" if ll["mean"] is None else (
            f"{ll['mean']:.2f} [{ll['low']:.2f}, {ll['high']:.2f}]" if ll["low"] is not None else f"{ll['mean']:.2f}")
        name = row["config"] + (" (recommended)" if rec is not None and row["strength"] == rec else "")
        lines.append(f"| {name} | {_pct(row['benign'][split])} | {_pct(row['harmful'][split])} | {ll_text} |")
    return "\n".join(lines)


def format_categories(result: SweepResult, label: str) -> str:
    cats = list(result.summary[0][label]["by_category"])
    head = "| config | " + " | ".join(f"{c} (n={result.summary[0][label]['by_category'][c]['n']})" for c in cats) + " |"
    lines = [head, "|---|" + "---:|" * len(cats)]
    for row in result.summary:
        cells = [f"{100 * row[label]['by_category'][c]['rate']:.0f}%" for c in cats]
        lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_recommendation(result: SweepResult) -> str:
    rec = result.recommendation
    if rec.get("strength") is None:
        return f"recommended strength: none ({rec.get('reason', '')}); rule: {rec.get('rule', '')}"
    t, a = rec["test"], rec["aligned_test"]
    text = (f"recommended strength: {rec['strength']:g} ({rec['rule']}).\n"
            f"  test split: harmful refused {_pct(t['harmful'])} (aligned {_pct(a['harmful'])}), "
            f"benign refused {_pct(t['benign'])} (aligned {_pct(a['benign'])})")
    if "test_over_refusal_reduction" in rec:
        text += f"; over-refusal cut by {100 * rec['test_over_refusal_reduction']:.0f}%"
    return text


def write_results(result: SweepResult, path: Path, extra: Optional[dict] = None) -> Path:
    payload = {**(extra or {}), **result.to_json()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path
