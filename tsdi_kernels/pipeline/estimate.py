"""Streaming estimation of the TSDI bias (docs/architecture.md; the formula in README "What TSDI is").

    bias[t, v] = mean over random (prompt x, answer prefix y<t) of log_softmax(A(x, y<t))[v] - log_softmax(R(x, y<t))[v]

One batch at a time: build B random prompts (prompts.py), run each model once over prompt + prefix keeping only
the L answer positions' logits, fold them into the running (mean, M2, count) with torch.ops.tsdi.logit_mean_update.
Memory is one batch of [B, L, V] logits per model, whatever num_prompts is.

Checkpoints hold (mean, M2, count) and the number of batches done; the prompt stream is a pure function of
(seed, batch index), so that number is the whole RNG state, and a resumed run applies exactly the updates an
uninterrupted run applies, in the same order: the same table, bitwise. A checkpoint is validated before it is
used (read_checkpoint): batches_done must be an integer in [0, number of batches] and every count must be the
number of prompts in those batches. On Ctrl-C the batches done are read from the count, which is committed with
mean and M2 (the last batch may be partial), and a batch interrupted inside its update is rolled back first.

Alongside the bias, the aligned model's mean log-probabilities over the same prompts are accumulated (a second
logit_mean_update with reference=None) and saved as the table's optional `aligned_logprob`, so that inspection can
rank tokens by the probability debiasing moves (bias.py). Checkpoints carry it; a checkpoint written without it
resumes into a table without it.
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Optional, Sequence, Union

import torch

from .bias import BiasTable, tokenizer_fingerprint
from .distributed import merged_statistics, rank_and_world
from .files import check_writable_path
from .prompts import PromptTemplate, describe_pool, prompt_batch, token_pool

CHECKPOINT_KIND = "tsdi-estimate-checkpoint"
# Checkpoint fields that must agree for a resumed run to continue the same prompt stream.
_RESUME_KEYS = ("seed", "num_prompts", "batch_size", "length", "pool", "prompt_tokens", "normalize", "vocab_size",
                "tokenizer_fingerprint", "use_chat_template")


def model_vocab_size(model) -> int:
    """V of the model's logits: rows of the output embedding, else config.vocab_size."""
    get_out = getattr(model, "get_output_embeddings", None)
    emb = get_out() if callable(get_out) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    if getattr(config, "vocab_size", None) is None:
        raise ValueError(f"cannot tell the vocabulary size of {type(model).__name__}: no output embedding or "
                         "config.vocab_size")
    return int(config.vocab_size)


def model_name(model) -> str:
    return str(getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
               or type(model).__name__)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def check_vocabularies(aligned, reference, tokenizer) -> int:
    """The shared vocabulary size V; ValueError (before any forward pass) if the models or tokenizer disagree."""
    if not (callable(getattr(tokenizer, "get_vocab", None)) and hasattr(tokenizer, "__len__")):
        raise ValueError(f"`tokenizer` must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    for name, model in (("aligned", aligned), ("reference", reference)):
        if not callable(model):
            raise ValueError(f"`{name}` must be a causal LM (callable module), got {type(model).__name__}")
    v_a, v_r = model_vocab_size(aligned), model_vocab_size(reference)
    if v_a != v_r:
        raise ValueError(f"the aligned model has a vocabulary of {v_a} tokens but the reference has {v_r}: "
                         "TSDI needs two models with the same vocabulary")
    if len(tokenizer) > v_a:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the models' vocabulary has only {v_a}: "
                         "the tokenizer belongs to another model")
    return v_a


def _check_args(num_prompts, length, batch_size, prompt_tokens, checkpoint_every, seed) -> tuple:
    for name, value in (("num_prompts", num_prompts), ("length", length), ("batch_size", batch_size),
                        ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}")
    if (not isinstance(prompt_tokens, (tuple, list)) or len(prompt_tokens) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in prompt_tokens)
            or not 0 <= prompt_tokens[0] <= prompt_tokens[1]):
        raise ValueError(f"`prompt_tokens` must be a pair (min, max) of integers with 0 <= min <= max, "
                         f"got {prompt_tokens!r}")
    return int(prompt_tokens[0]), int(prompt_tokens[1])


def _forward_kwargs(model) -> set:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    return set(params)


@torch.no_grad()
def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Logits [B, L, V] at the last `length` positions of left-padded `input_ids` (the answer positions)."""
    device = model_device(model)
    accepted = _forward_kwargs(model)
    kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if "position_ids" in accepted:
        # left padding: positions count real tokens only, as generate() does
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0).to(device)
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = length  # never materialise [B, S, V] logits for the prompt
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[:, -length:]


def _checkpoint_meta(config: dict, batches_done: int) -> dict:
    return {"kind": CHECKPOINT_KIND, "batches_done": batches_done, **config}


def rows_of_batches(batches: int, num_prompts: int, batch_size: int) -> int:
    """Prompts in the first `batches` batches of a run (every batch is full but the last)."""
    return min(batches * batch_size, num_prompts)


def batches_of_rows(rows: int, num_prompts: int, batch_size: int) -> Optional[int]:
    """The number of leading batches holding exactly `rows` prompts, or None if no prefix of batches does
    (e.g. 10 prompts in batches of 4: 0, 4, 8 and 10 rows are 0, 1, 2 and 3 batches; 6 rows is none)."""
    if rows == num_prompts:
        return math.ceil(num_prompts / batch_size)
    if 0 <= rows < num_prompts and rows % batch_size == 0:
        return rows // batch_size
    return None


def save_checkpoint(path: str, table: BiasTable, meta: dict) -> None:
    """A checkpoint is a bias table whose metadata says how far the run got (written atomically)."""
    table.copy(metadata=meta).save(path)


def read_checkpoint(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu"
                    ) -> tuple[BiasTable, int]:
    """(statistics, batches done) of a checkpoint file, validated, never trusted: the statistics are finite with
    counts >= 0 (BiasTable.load), `batches_done` is an integer in [0, number of batches of its run] and the count
    at every position is the number of prompts in those batches. ValueError naming the file and the field."""
    path = os.fspath(path)
    try:
        saved = BiasTable.load(path, device=device)
    except (ValueError, OSError) as exc:
        raise ValueError(f"`checkpoint` {path!r} is not a readable estimation checkpoint ({exc})") from None
    header = saved.metadata
    if header.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"`checkpoint` {path!r} is not an estimation checkpoint (metadata `kind` is "
                         f"{header.get('kind')!r:.60}, expected {CHECKPOINT_KIND!r})")
    for key in ("num_prompts", "batch_size"):
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"`checkpoint` {path!r}: metadata `{key}` must be a positive integer, got {value!r:.60}")
    num_prompts, batch_size = header["num_prompts"], header["batch_size"]
    num_batches = math.ceil(num_prompts / batch_size)
    done = header.get("batches_done")
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= num_batches:
        raise ValueError(f"`checkpoint` {path!r}: metadata `batches_done` must be an integer in [0, {num_batches}] "
                         f"(the batches of {num_prompts} prompts in batches of {batch_size}), got {done!r:.60}")
    rows = rows_of_batches(done, num_prompts, batch_size)
    counts = saved.count.tolist()
    if any(c != rows for c in counts):
        wrong = next(c for c in counts if c != rows)
        raise ValueError(f"`checkpoint` {path!r}: `count` {wrong} does not match batches_done={done} "
                         f"({rows} prompts at every position): the file is inconsistent")
    return saved, done


def check_checkpoint_settings(path: str, header: dict, config: dict, keys=None) -> None:
    """ValueError if the checkpoint was written by a run with other settings (seed, batch size, pool, ...)."""
    for key in _RESUME_KEYS if keys is None else keys:
        if header.get(key) != config.get(key):
            raise ValueError(f"`checkpoint` {path!r} was written with {key}={header.get(key)!r} but this run has "
                             f"{key}={config.get(key)!r}; use another checkpoint path or the same settings")


def load_checkpoint(path: str, table: BiasTable, config: dict, aligned: Optional[BiasTable] = None) -> int:
    """Load running statistics into `table`; returns the number of batches done. ValueError if the checkpoint is
    invalid (read_checkpoint) or was written by a run with another configuration (seed, batch size, pool, ...).
    `aligned`: the accumulator of the aligned model's mean log-probabilities; its mean and count are loaded from
    the checkpoint's `aligned_logprob` (its M2 is never used). Returns -done - 1 when `aligned` was given but the
    checkpoint has no `aligned_logprob` (written by an older version): the caller stops tracking it."""
    saved, done = read_checkpoint(path, device=table.mean.device)
    check_checkpoint_settings(path, saved.metadata, config)
    if saved.mean.shape != table.mean.shape:
        raise ValueError(f"`checkpoint` {path!r} holds statistics of shape {list(saved.mean.shape)}, expected "
                         f"{list(table.mean.shape)}")
    for name in ("mean", "m2", "count"):
        getattr(table, name).copy_(getattr(saved, name))
    if aligned is not None:
        if saved.aligned_logprob is None:
            return -done - 1
        aligned.mean.copy_(saved.aligned_logprob)
        aligned.count.copy_(saved.count)
    return done


def estimate_bias(
    aligned,
    reference,
    tokenizer,
    *,
    num_prompts: int,
    length: int,
    batch_size: int = 8,
    pool: Union[str, Sequence[str]] = "vocab",
    prompt_tokens: tuple = (8, 32),
    seed: int = 0,
    normalize: bool = True,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: int = 16,
    progress: bool = True,
    device: Optional[Union[str, torch.device]] = None,
    use_chat_template: bool = True,
) -> BiasTable:
    """Estimate the TSDI bias of `aligned` against `reference` at the first `length` answer positions.

    Parameters
    ----------
    aligned, reference : causal LMs (e.g. AutoModelForCausalLM) sharing one vocabulary.
    tokenizer : their tokenizer; its chat template (if any) wraps the random prompts.
    num_prompts : random (prompt, answer prefix) pairs to average over; the standard error falls as 1/sqrt(N).
    length : L, the answer positions covered (the bias is applied to the first L generated tokens).
    batch_size : prompts per forward pass; memory is one batch of [B, L, V] logits per model.
    pool : "vocab" (uniform over non-special tokens), a path to a UTF-8 text file, or a list of strings.
    prompt_tokens : (min, max) length of the random user message, in tokens.
    seed : the prompt stream is a pure function of (seed, batch index).
    normalize : accumulate log-probability differences (True) or raw logit differences (False).
    checkpoint : path of a checkpoint file: resumed from if it exists, written every `checkpoint_every` batches,
        at the end, and on Ctrl-C. The resumed run gives the table an uninterrupted run gives.
    progress : show a tqdm bar with prompts done and the largest standard error.
    device : where the running statistics live (default: the aligned model's device).
    use_chat_template : wrap prompts in the tokenizer's chat template when it has one.

    With torch.distributed initialised, each rank draws its own batches (rank, rank + world, ...) and the ranks'
    statistics are merged at checkpoints and at the end; every rank returns the merged table.

    Examples
    --------
    >>> table = estimate_bias(aligned, reference, tokenizer, num_prompts=2048, length=16, batch_size=32)
    >>> table.save("bias.safetensors")
    """
    lo, hi = _check_args(num_prompts, length, batch_size, prompt_tokens, checkpoint_every, seed)
    if checkpoint is not None:
        # before any forward pass: a checkpoint that cannot be written would lose the run at its first save
        try:
            check_writable_path(checkpoint, "`checkpoint`")
        except OSError as exc:
            raise ValueError(str(exc)) from None
        checkpoint = os.fspath(checkpoint)
    vocab = check_vocabularies(aligned, reference, tokenizer)
    template = PromptTemplate.from_tokenizer(tokenizer, use_chat_template)
    pool_ids = token_pool(tokenizer, pool)
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    device = torch.device(device) if device is not None else model_device(aligned)
    rank, world = rank_and_world()

    config = {"seed": seed, "num_prompts": num_prompts, "batch_size": batch_size, "length": length,
              "pool": describe_pool(pool), "prompt_tokens": [lo, hi], "normalize": bool(normalize), "vocab_size": vocab,
              "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "use_chat_template": bool(use_chat_template)}
    acc = BiasTable.empty(length, vocab, normalize=normalize, device=device)
    # mean log_softmax(aligned) over the same prompts: the table's optional `aligned_logprob` (None: not tracked)
    lp: Optional[BiasTable] = BiasTable.empty(length, vocab, normalize=True, device=device)
    num_batches = math.ceil(num_prompts / batch_size)
    start = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        start = load_checkpoint(checkpoint, acc, config, aligned=lp)
        if start < 0:  # an older checkpoint without aligned_logprob: the batches done cannot be recovered for it
            start, lp = -start - 1, None
        if rank != 0:  # rank 0 carries the checkpoint's statistics; the others start empty and add their own
            acc = BiasTable.empty(length, vocab, normalize=normalize, device=device)
            if lp is not None:
                lp = BiasTable.empty(length, vocab, normalize=True, device=device)

    def batch_rows(i: int) -> int:
        return min(batch_size, num_prompts - i * batch_size)

    def with_logprob(stats: BiasTable, aligned_stats: Optional[BiasTable]) -> BiasTable:
        stats = stats.copy()
        stats.aligned_logprob = None if aligned_stats is None else aligned_stats.mean.detach().clone()
        return stats

    def merged() -> BiasTable:
        """The statistics of all ranks (a collective under torch.distributed), with aligned_logprob."""
        if world == 1:
            return with_logprob(acc, lp)
        return with_logprob(merged_statistics(acc), None if lp is None else merged_statistics(lp))

    def save(batches_done: int, stats: BiasTable) -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, stats, _checkpoint_meta(config, batches_done))

    bar = _progress_bar(progress and rank == 0, num_prompts, rows_of_batches(start, num_prompts, batch_size))
    rounds = math.ceil((num_batches - start) / world)
    # The statistics before the batch being folded in: a backend whose update is several steps (Triton launches
    # mean/M2 and count separately) could be interrupted between them; the interrupt handler puts this back, so
    # a checkpoint never holds a half-applied batch. One copy of [L, V] per batch, small next to two forwards.
    live = (acc.mean, acc.m2, acc.count) + (() if lp is None else (lp.mean, lp.m2, lp.count))
    before = tuple(x.clone() for x in live)
    consistent = True
    try:
        for r in range(rounds):
            i = start + r * world + rank
            if i < num_batches:
                ids, mask = prompt_batch(template, pool_ids, seed=seed, batch_index=i, batch_size=batch_rows(i),
                                         length=length, prompt_tokens=(lo, hi), pad_id=pad_id)
                a = answer_logits(aligned, ids, mask, length).to(device)
                ref = answer_logits(reference, ids, mask, length).to(device)
                torch._foreach_copy_(before, live)  # one call: cannot be half done
                consistent = False
                acc.update(a, ref)
                if lp is not None:
                    lp.update(a)  # log_softmax(aligned) alone
                consistent = True
                del a, ref
            done = min(start + (r + 1) * world, num_batches)
            if bar is not None:
                bar.set_postfix(max_stderr=f"{_max_stderr(acc):.4g}", refresh=False)
                rows = sum(batch_rows(j) for j in range(start + r * world, done))
                if done < num_batches:
                    bar.update(rows)
                else:
                    # the last step is shown once, by close() (an update() here would print the final line a
                    # second time, with the moving-average rate, in logs that keep every refresh)
                    bar.n += rows
            if (r + 1) % checkpoint_every == 0 and done < num_batches:
                save(done, merged())
    except KeyboardInterrupt:
        # Single process only: a collective here could hang the other ranks; they keep the last periodic
        # checkpoint. The count is committed with mean and M2, so it says exactly which batches are in the
        # statistics (the last batch may be partial: 10 prompts in batches of 4 is 3 batches, not 10 // 4).
        if not consistent:
            torch._foreach_copy_(live, before)
        if world == 1 and checkpoint is not None:
            done = batches_of_rows(int(acc.count[0]), num_prompts, batch_size)
            if done is not None and bool((acc.count == acc.count[0]).all()):
                save(done, merged())
        raise
    finally:
        if bar is not None:
            bar.close()

    acc = merged()
    save(num_batches, acc)
    metadata = {"aligned": model_name(aligned), "reference": model_name(reference),
                **{k: v for k, v in config.items() if k != "use_chat_template"},
                "use_chat_template": bool(use_chat_template and getattr(tokenizer, "chat_template", None))}
    return acc.copy(metadata={"normalize": bool(normalize), **metadata})


def _max_stderr(acc: BiasTable) -> float:
    se = acc.stderr
    finite = se[torch.isfinite(se)]
    return float(finite.max()) if finite.numel() else math.nan


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="prompt", desc="tsdi estimate")
