"""A prompt's KV cache computed once and reused: transformers' cache objects, handled in one place.

The strength sweep answers every prompt with several configurations of the same model. The prompt's forward pass
(prefill) is the same for all of them, so it is computed once (`prefill`), copied per configuration, and its rows
are selected (`select_rows`) or gathered from several caches (`concat_rows`) when only some rows continue. These
touch transformers internals (DynamicCache, its `layers`, the forward's cache argument), which is why they live
beside the Hugging Face integration.
"""
from __future__ import annotations

import copy
import inspect
from typing import Sequence

import torch


def cache_kwarg(model) -> str:
    """The name of the forward's KV-cache argument ("cache" in recent transformers, "past_key_values" before)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
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
                    **{cache_kwarg(model): cache})
    new = out.get("cache") if "cache" in out else out.get("past_key_values")
    return new if new is not None else cache


def select_rows(cache, rows: torch.Tensor):
    """A copy of `cache` holding the given batch rows (repeats allowed)."""
    new = copy.deepcopy(cache)
    if hasattr(new, "reorder_cache"):
        new.reorder_cache(rows)
    else:  # pragma: no cover  (older caches)
        for layer in new.layers:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
    return new


def concat_rows(parts: Sequence[tuple]):
    """A new cache holding row `r` of cache `c` for each (c, r) in `parts`, in order (all of one length)."""
    new = copy.deepcopy(parts[0][0])
    for i, layer in enumerate(new.layers):
        layer.keys = torch.cat([c.layers[i].keys[r:r + 1] for c, r in parts])
        layer.values = torch.cat([c.layers[i].values[r:r + 1] for c, r in parts])
    return new
