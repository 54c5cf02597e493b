"""The default engine: answers from tsdi_kernels.generate (the fused debias + sampling op) on the HF models.

Cost (CPU decoding is most of it): the prompt's forward pass (prefill) is shared: per batch the aligned model's
prompt cache is computed once and copied for each strength, the reference's once for its answers and for scoring
(integrations/hf_prefix_cache.py). TSDI changes only the first L answer tokens, so each configuration of the
aligned model generates those, and each distinct opening is continued once for all configurations that share it
(generate_many; greedy answers are exactly those of separate generate calls).
"""
from __future__ import annotations

import copy
import time
from typing import Optional, Sequence

import torch

from ..integrations import hf_prefix_cache as prefix_cache
from ..integrations.hf import bias_tensor, encode_prompts, generate
from .prompts import Prompt
from .settings import Config, Decoding


class HFEngine:
    """Batched generation and scoring on one (aligned, reference) pair with tsdi_kernels.integrations.hf.generate
    (the Engine protocol of engine.py)."""

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
        """Nothing to release (the models belong to the caller); VllmEngine shuts its engines down."""

    def encode(self, prompts: Sequence[Prompt]) -> dict:
        return encode_prompts(self.tokenizer, [p.text for p in prompts])

    def prefill(self, role: str, enc: dict):
        if not self.share_prefill:
            return None
        return prefix_cache.prefill(self.models[role], enc["input_ids"], enc["attention_mask"])

    def _call(self, model, prompts, input_ids, attention_mask, *, bias, strength, seeds, max_new_tokens,
              cache=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if cache is not None:
            kwargs[prefix_cache.cache_kwarg(model)] = cache
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
            part_cache = prefix_cache.concat_rows([(caches[name], r) for name, r in part])
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
                rows_cache = prefix_cache.select_rows(cache, rows)
                logits = model(input_ids=inputs, attention_mask=full_mask, position_ids=position_ids,
                               use_cache=True, **{prefix_cache.cache_kwarg(model): rows_cache}).logits
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
