"""Random prompts and answer prefixes for bias estimation.

A prompt is `head + x + tail + y`: with a chat template, `head`/`tail` are the template's tokens around the user
turn (tail ends with the assistant header), `x` a random user message of prompt_tokens[0]..prompt_tokens[1]
tokens and `y` a random answer prefix of L - 1 tokens. The model's logits at the last L positions of that
sequence predict answer tokens 0 .. L-1 (the last header token predicts token 0).

Every batch is a pure function of (seed, batch index): resuming, or splitting batches across ranks, draws
exactly the prompts an uninterrupted single-process run draws.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

# Placed in the user turn to find where the template puts the message; any string the template keeps verbatim.
_SENTINEL = "TSDI_USER_MESSAGE_SENTINEL"

PoolSpec = Union[str, Sequence[str]]


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, batch_index) (numpy's SeedSequence mixes the two well)."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), int(batch_index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) | (int(state[1]) << 32))


def describe_pool(pool: PoolSpec) -> str:
    """A short, JSON-friendly description of the pool for the table metadata."""
    if isinstance(pool, str):
        return pool if pool == "vocab" else f"file:{os.path.basename(pool)}"
    return f"strings:{len(pool)}"


def token_pool(tokenizer, pool: PoolSpec = "vocab") -> Tensor:
    """int64 [P]: the token ids random prompts are drawn from, uniformly.

    "vocab" -> every non-special id the tokenizer knows; a path -> the tokens of that UTF-8 text file;
    a list of strings -> their tokens (repeated tokens are drawn more often: the corpus' unigram distribution)."""
    if isinstance(pool, str) and pool == "vocab":
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special |= {i for i, tok in decoder.items() if getattr(tok, "special", False)}
        ids = [i for i in sorted(set(tokenizer.get_vocab().values())) if i not in special]
    else:
        if isinstance(pool, str):
            if not os.path.isfile(pool):
                raise FileNotFoundError(f"`pool` file {pool!r} does not exist")
            with open(pool, encoding="utf-8") as f:
                texts = [f.read()]
        elif isinstance(pool, (list, tuple)) and all(isinstance(s, str) for s in pool):
            texts = list(pool)
        else:
            raise ValueError(f"`pool` must be 'vocab', a path to a text file or a list of strings, got {pool!r:.80}")
        ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError(f"`pool` {describe_pool(pool)!r} contains no tokens")
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class PromptTemplate:
    head: list  # token ids before the user message (BOS, system turn, user header)
    tail: list  # token ids after it, ending with the assistant header

    @classmethod
    def from_tokenizer(cls, tokenizer, use_chat_template: bool = True) -> "PromptTemplate":
        if use_chat_template and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                                 add_generation_prompt=True)
            if text.count(_SENTINEL) != 1:
                raise ValueError("the tokenizer's chat template does not keep the user message verbatim; "
                                 "pass use_chat_template=False")
            before, after = text.split(_SENTINEL)
            enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
            return cls(enc(before), enc(after))
        bos = getattr(tokenizer, "bos_token_id", None)
        return cls([bos] if bos is not None else [], [])


def prompt_batch(template: PromptTemplate, pool: Tensor, *, seed: int, batch_index: int, batch_size: int,
                 length: int, prompt_tokens: tuple, pad_id: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both [B, S], left-padded so that the last `length` positions of every row
    are the answer positions. Deterministic in (seed, batch_index)."""
    gen = batch_generator(seed, batch_index)
    lo, hi = prompt_tokens
    n_user = torch.randint(lo, hi + 1, (batch_size,), generator=gen)
    n_max = int(n_user.max())
    # one draw of n_max user tokens and length-1 prefix tokens per row, sliced: the draws of a row do not depend
    # on the other rows' lengths
    user = pool[torch.randint(0, pool.numel(), (batch_size, n_max), generator=gen)]
    prefix = pool[torch.randint(0, pool.numel(), (batch_size, length - 1), generator=gen)]
    head = torch.tensor(template.head, dtype=torch.int64)
    tail = torch.tensor(template.tail, dtype=torch.int64)
    rows = [torch.cat([head, user[b, : int(n_user[b])], tail, prefix[b]]) for b in range(batch_size)]
    width = max(r.numel() for r in rows)
    input_ids = torch.full((batch_size, width), pad_id, dtype=torch.int64)
    mask = torch.zeros((batch_size, width), dtype=torch.int64)
    for b, r in enumerate(rows):
        input_ids[b, width - r.numel():] = r
        mask[b, width - r.numel():] = 1
    return input_ids, mask
