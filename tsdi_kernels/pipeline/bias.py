"""BiasTable: the running statistics of the TSDI bias [L, V] (mean, M2, count), their updates, and their file.

One class holds the statistics while they are estimated (update / merge), when they are checkpointed, and when
they are used for debiasing; estimation checkpoints are bias tables with extra metadata.

File format (safetensors, one file):
    tensors   mean  float32 [L, V]   running mean of log_softmax(A) - log_softmax(R) per answer position
              m2    float32 [L, V]   running sum of squared deviations (Welford / Chan M2)
              count int64   [L]      prompts counted at each position
              aligned_logprob float32 [L, V]  OPTIONAL: mean log_softmax(A) over the same prompts (estimate_bias
                                     writes it; tables written before it existed load without it)
    metadata  every value a JSON-encoded string (safetensors only stores str -> str); see METADATA_KEYS.
Keeping m2 and count (not just the standard error) lets two tables be merged exactly later.

Which tokens matter (ranked_tokens, `tsdi inspect`): a large bias on a token that neither model ever gives any
probability changes nothing when decoding, and such tokens (rare sub-words, runs of punctuation, special tokens)
top a ranking by raw bias. With `aligned_logprob` a token is ranked by the probability debiasing moves at
position t: p_aligned = softmax(aligned_logprob[t]) (the normalised geometric mean of the aligned model's
distributions over the random prompts), p_debiased = softmax(aligned_logprob[t] - strength * mean[t]) (at strength
1, the reference's geometric mean: mean[t] is the mean log-ratio over the same prompts), moved = |p_debiased -
p_aligned|; half its sum over the vocabulary is the total variation TSDI causes at position t.

A file is validated, never trusted: load() refuses (ValueError naming the file and the field) statistics that no
estimation produces (non-finite mean or m2, negative m2 or count), a format_version that is not the integer this
package writes, and metadata of the wrong type; a folder or a FIFO is named as such. Saves are atomic and get the
user's umask (files.atomic_write).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .. import kernels  # noqa: F401  (defines torch.ops.tsdi.logit_mean_update)
from .files import atomic_write, check_readable_file


def sample_variance(m2: Tensor, count: Tensor) -> Tensor:
    """Unbiased variance [L, V] from Welford's M2 [L, V] and count [L]: M2 / (n - 1), NaN where n < 2."""
    n = count.to(torch.float32)[:, None]
    return torch.where(n > 1, m2 / (n - 1).clamp(min=1), torch.full_like(m2, math.nan))


def standard_error(m2: Tensor, count: Tensor) -> Tensor:
    """Standard error of the mean [L, V]: sqrt(variance / n)."""
    n = count.to(torch.float32)[:, None]
    return torch.sqrt(sample_variance(m2, count) / n.clamp(min=1))


FORMAT_VERSION = 1
# What a table records about how it was made (all optional when loading; the format version is not).
METADATA_KEYS = (
    "format_version", "package_version", "aligned", "reference", "tokenizer_fingerprint", "vocab_size",
    "num_prompts", "length", "pool", "seed", "normalize", "prompt_tokens", "batch_size", "tokenizer",
)
# A mean of log-probabilities is <= 0; float rounding of log_softmax can leave the top token a hair above 0.
_LOGPROB_SLACK = 1e-3


class TokenBias(NamedTuple):
    """One token's row in a ranking (BiasTable.ranked_tokens / token_stats)."""

    token_id: int
    text: Optional[str]    # decoded text, None without a tokenizer
    bias: float            # mean[t, v]
    stderr: float          # its standard error (NaN with fewer than two prompts)
    p_aligned: float       # softmax(aligned_logprob[t])[v]; NaN when the table has no aligned_logprob
    p_debiased: float      # softmax(aligned_logprob[t] - strength * mean[t])[v]; NaN likewise
    moved: float           # |p_debiased - p_aligned|: the probability debiasing moves (NaN likewise)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the sorted (token, id) vocabulary: equal iff two tokenizers map the same strings to the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    blob = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


class BiasTable:
    """The TSDI bias of an aligned model against its reference at the first L answer positions.

    Attributes
    ----------
    mean : float32 [L, V]   the bias (subtract ``strength * mean[t]`` from the logits at answer step t)
    stderr : float32 [L, V] standard error of ``mean`` (NaN where fewer than two prompts were counted)
    count : int64 [L]       prompts counted at each position
    metadata : dict         how the table was made (models, tokenizer fingerprint, pool, seed, ...)
    aligned_logprob : float32 [L, V] or None   the aligned model's mean log-probabilities over the same prompts
                            (optional: used to rank tokens by the probability debiasing moves)

    Examples
    --------
    >>> table = estimate_bias(aligned, reference, tokenizer, num_prompts=1024, length=16)
    >>> table.save("bias.safetensors")
    >>> table = BiasTable.load("bias.safetensors", tokenizer=tokenizer)
    >>> table.ranked_tokens(0, 5, tokenizer)   # [TokenBias(token_id, text, bias, stderr, p_aligned, ...), ...]
    """

    def __init__(self, mean: Tensor, m2: Tensor, count: Tensor, metadata: Optional[dict] = None,
                 aligned_logprob: Optional[Tensor] = None):
        _check_tensors(mean, m2, count, source="BiasTable")
        _check_values(mean, m2, count, source="BiasTable")
        if aligned_logprob is not None:
            _check_aligned_logprob(aligned_logprob, mean, source="BiasTable")
        self.mean = mean
        self.m2 = m2
        self.count = count
        self.metadata = dict(metadata or {})
        self.aligned_logprob = aligned_logprob

    @classmethod
    def _trusted(cls, mean: Tensor, m2: Tensor, count: Tensor, metadata: Optional[dict],
                 aligned_logprob: Optional[Tensor] = None) -> "BiasTable":
        """A table from statistics that are valid already (a copy or a move of a table): no pass over the values."""
        table = cls.__new__(cls)
        table.mean, table.m2, table.count, table.metadata = mean, m2, count, dict(metadata or {})
        table.aligned_logprob = aligned_logprob
        return table

    @classmethod
    def empty(cls, length: int, vocab: int, *, normalize: bool = True, device: Union[str, torch.device] = "cpu",
              metadata: Optional[dict] = None) -> "BiasTable":
        """A table with no rows counted yet, to be filled with :meth:`update` (and :meth:`merge`).

        >>> table = BiasTable.empty(16, 32000)
        >>> table.update(aligned_logits, reference_logits)   # [B, 16, 32000] each, any batch size
        >>> table.mean, table.stderr, table.count"""
        for name, value in (("length", length), ("vocab", vocab)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        zeros = torch.zeros(length, vocab, dtype=torch.float32, device=device)
        meta = {**(metadata or {}), "normalize": bool(normalize)}
        return cls(zeros, zeros.clone(), torch.zeros(length, dtype=torch.int64, device=device), meta)

    @property
    def normalize(self) -> bool:
        """Whether rows are log-probability differences (True) or raw logit differences."""
        return bool(self.metadata.get("normalize", True))

    def update(self, aligned: Tensor, reference: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> None:
        """Fold a batch [B, L, V] of logits (optionally masked [B, L]) into the statistics, in place
        (torch.ops.tsdi.logit_mean_update: a batch is applied fully or not at all)."""
        torch.ops.tsdi.logit_mean_update(self.mean, self.m2, self.count, aligned, reference, mask, self.normalize)

    def merge(self, other: "BiasTable") -> None:
        """Chan's parallel merge of another table's statistics (e.g. another rank's) into this one, in float64.
        `aligned_logprob` is merged when both tables have it, else dropped (it could not be known)."""
        n_a = self.count.to(torch.float64)[:, None]
        n_b = other.count.to(torch.float64).to(self.mean.device)[:, None]
        n = (n_a + n_b).clamp(min=1)
        mine, theirs = getattr(self, "aligned_logprob", None), getattr(other, "aligned_logprob", None)
        if mine is not None and theirs is not None:
            merged = mine.double() + (theirs.double().to(mine.device) - mine.double()) * n_b / n
            self.aligned_logprob = merged.to(torch.float32)
        else:
            self.aligned_logprob = None
        delta = other.mean.double().to(self.mean.device) - self.mean.double()
        new_mean = self.mean.double() + delta * n_b / n
        new_m2 = self.m2.double() + other.m2.double().to(self.mean.device) + delta * delta * n_a * n_b / n
        self.mean.copy_(new_mean)
        self.m2.copy_(new_m2)
        self.count += other.count.to(self.count.device)

    def copy(self, metadata: Optional[dict] = None) -> "BiasTable":
        """A detached copy (statistics cloned), with `metadata` in place of this table's if given."""
        lp = getattr(self, "aligned_logprob", None)
        return BiasTable._trusted(self.mean.detach().clone(), self.m2.detach().clone(), self.count.detach().clone(),
                                  self.metadata if metadata is None else metadata,
                                  None if lp is None else lp.detach().clone())

    # --- shape and statistics ------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return int(self.mean.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.mean.shape[1])

    @property
    def variance(self) -> Tensor:
        return sample_variance(self.m2, self.count)

    @property
    def stderr(self) -> Tensor:
        return standard_error(self.m2, self.count)

    def to(self, device: Union[str, torch.device]) -> "BiasTable":
        lp = getattr(self, "aligned_logprob", None)
        return BiasTable._trusted(self.mean.to(device), self.m2.to(device), self.count.to(device), self.metadata,
                                  None if lp is None else lp.to(device))

    def __repr__(self) -> str:
        n = self.count.tolist()
        return f"BiasTable(L={self.length}, V={self.vocab_size}, count={n[0] if len(set(n)) == 1 else n})"

    # --- inspection ----------------------------------------------------------------------------------------
    def moved_probability(self, t: int, strength: float = 1.0) -> tuple[Tensor, Tensor]:
        """(p_aligned, p_debiased) [V] at answer position t (see the module docstring); ValueError without
        `aligned_logprob`."""
        self._check_position(t)
        lp = getattr(self, "aligned_logprob", None)
        if lp is None:
            raise ValueError("this bias table has no `aligned_logprob` (written by an older tsdi_kernels): "
                             "re-estimate it to rank tokens by the probability they move")
        row = lp[t].float().cpu()
        return torch.softmax(row, dim=-1), torch.softmax(row - strength * self.mean[t].float().cpu(), dim=-1)

    def total_variation(self, t: int, strength: float = 1.0) -> float:
        """The share of the probability at answer position t that debiasing at `strength` moves (0 .. 1), for the
        aligned model's mean distribution over the random prompts."""
        p_a, p_d = self.moved_probability(t, strength)
        return 0.5 * float((p_d - p_a).abs().sum())

    def ranked_tokens(self, t: int, k: int = 10, tokenizer=None, *, by: str = "moved", largest: bool = True,
                      strength: float = 1.0, skip_special: bool = True, min_moved: float = 1e-6) -> list:
        """The k tokens that matter most at answer position t, as TokenBias rows.

        by="moved" (needs `aligned_logprob`): largest=True lists the tokens debiasing takes probability from
        (the aligned model's over-preferences, e.g. refusal openers), largest=False those it gives probability to,
        each ranked by the probability moved; tokens moving less than `min_moved` (a millionth by default) are
        left out, so fewer than k rows can come back. by="bias": by the raw bias (largest or smallest).
        With a tokenizer, ids it does not know are skipped, and its special tokens too when `skip_special`."""
        self._check_position(t)
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"`k` must be a positive integer, got {k!r}")
        if by not in ("moved", "bias"):
            raise ValueError(f"`by` must be 'moved' or 'bias', got {by!r}")
        bias = self.mean[t].float().cpu()
        keep = torch.ones(self.vocab_size, dtype=torch.bool)
        if tokenizer is not None:
            keep[len(tokenizer):] = False
            if skip_special:
                special = [i for i in (getattr(tokenizer, "all_special_ids", None) or []) if 0 <= i < self.vocab_size]
                keep[special] = False
        if by == "moved":
            p_a, p_d = self.moved_probability(t, strength)
            change = p_a - p_d if largest else p_d - p_a
            score = torch.where(keep & (change > 0) & (change >= min_moved), change,
                                torch.full_like(change, -math.inf))
            largest_score = True
        else:
            score = torch.where(keep, bias, torch.full_like(bias, -math.inf if largest else math.inf))
            largest_score = largest
        _, ids = torch.topk(score, min(k, self.vocab_size), largest=largest_score)
        ids = [i for i in ids.tolist() if math.isfinite(float(score[i]))]
        return self.token_stats(t, ids, tokenizer, strength=strength)

    def token_stats(self, t: int, ids: Sequence[int], tokenizer=None, *, strength: float = 1.0) -> list:
        """TokenBias rows for the given token ids at answer position t (e.g. refusal and compliance openers)."""
        self._check_position(t)
        err = self.stderr[t].float().cpu()
        bias = self.mean[t].float().cpu()
        if getattr(self, "aligned_logprob", None) is not None:
            p_a, p_d = self.moved_probability(t, strength)
        else:
            p_a = p_d = torch.full_like(bias, math.nan)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the table's vocabulary [0, {self.vocab_size})")
            text = tokenizer.decode([i]) if tokenizer is not None else None
            pa, pd = float(p_a[i]), float(p_d[i])
            out.append(TokenBias(i, text, float(bias[i]), float(err[i]), pa, pd, abs(pd - pa)))
        return out

    def _check_position(self, t) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.length:
            raise ValueError(f"`t` must be an integer in [0, {self.length}), got {t!r}")

    # --- file format ---------------------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the table to a safetensors file atomically (temporary file in the same folder, fsync, replace)."""
        from safetensors.torch import save_file

        from .. import __version__

        meta = dict(self.metadata)
        meta["format_version"] = FORMAT_VERSION
        meta.setdefault("package_version", __version__)
        header = {key: json.dumps(value) for key, value in meta.items()}
        tensors = {"mean": self.mean.detach().float().cpu().contiguous(),
                   "m2": self.m2.detach().float().cpu().contiguous(),
                   "count": self.count.detach().to(torch.int64).cpu().contiguous()}
        lp = getattr(self, "aligned_logprob", None)
        if lp is not None:
            tensors["aligned_logprob"] = lp.detach().float().cpu().contiguous()
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], tokenizer=None, *, device: Union[str, torch.device] = "cpu"):
        """Read and validate a table; with `tokenizer`, refuse a table estimated with another vocabulary."""
        from safetensors import SafetensorError, safe_open

        path = os.fspath(path)
        check_readable_file(path, "bias table")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                names = set(f.keys())
                missing = {"mean", "m2", "count"} - names
                if missing:
                    raise ValueError(f"{path!r} is not a TSDI bias table: missing tensors {sorted(missing)}")
                mean, m2, count = (f.get_tensor(n) for n in ("mean", "m2", "count"))
                # optional (tables written before it existed load without it)
                aligned_logprob = f.get_tensor("aligned_logprob") if "aligned_logprob" in names else None
        except SafetensorError as exc:
            raise ValueError(f"{path!r} is not a readable safetensors file ({exc})") from None
        except OSError as exc:  # e.g. a truncated or non-safetensors file on some platforms
            raise ValueError(f"{path!r} is not a readable safetensors file ({exc})") from None
        metadata = _decode_metadata(path, header)
        _check_tensors(mean, m2, count, source=repr(path))
        _check_values(mean, m2, count, source=repr(path))
        if aligned_logprob is not None:
            _check_aligned_logprob(aligned_logprob, mean, source=repr(path))
        _check_metadata(path, metadata)
        table = cls._trusted(mean.to(device), m2.to(device), count.to(device), metadata,
                             None if aligned_logprob is None else aligned_logprob.to(device))
        if tokenizer is not None:
            table.check_tokenizer(tokenizer)
        return table

    def check_tokenizer(self, tokenizer) -> None:
        """ValueError unless `tokenizer` has the vocabulary this table was estimated with."""
        if len(tokenizer) > self.vocab_size:
            raise ValueError(f"the bias table covers V = {self.vocab_size} tokens but the tokenizer has "
                             f"{len(tokenizer)}: it was estimated for another vocabulary")
        expected = self.metadata.get("tokenizer_fingerprint")
        if expected is not None and not isinstance(expected, str):
            raise ValueError("the bias table's metadata `tokenizer_fingerprint` must be a string, got "
                             f"{expected!r:.60}")
        if expected is not None and expected != tokenizer_fingerprint(tokenizer):
            raise ValueError("the bias table was estimated with a different tokenizer vocabulary "
                             f"(fingerprint {expected[:19]}... does not match the tokenizer's)")


def _decode_metadata(path: str, header: dict) -> dict:
    meta: dict[str, Any] = {}
    for key, raw in header.items():
        try:
            meta[key] = json.loads(raw)
        except (TypeError, json.JSONDecodeError):
            meta[key] = raw  # written by someone else as a plain string: keep it as is
    version = meta.get("format_version")
    if version is None:
        raise ValueError(f"{path!r} has no format_version in its metadata: not a TSDI bias table")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{path!r}: metadata `format_version` must be an integer, got {version!r:.60}")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path!r} has bias-table format_version {version!r}; this package reads {FORMAT_VERSION}")
    return meta


# Types of the metadata fields this package reads back (others are descriptive and kept as they are).
_INT_FIELDS = ("vocab_size", "length", "num_prompts", "batch_size")


def _check_metadata(path: str, meta: dict) -> None:
    fingerprint = meta.get("tokenizer_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"{path!r}: metadata `tokenizer_fingerprint` must be a string, got {fingerprint!r:.60}")
    if "normalize" in meta and not isinstance(meta["normalize"], bool):
        raise ValueError(f"{path!r}: metadata `normalize` must be true or false, got {meta['normalize']!r:.60}")
    for key in _INT_FIELDS:
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{path!r}: metadata `{key}` must be an integer, got {value!r:.60}")


def _check_values(mean: Tensor, m2: Tensor, count: Tensor, *, source: str) -> None:
    """ValueError naming the field unless mean is finite, m2 finite and >= 0, count >= 0 (what the running
    statistics always are; anything else would silently poison every later update and every debiased logit)."""
    bad_mean = int((~torch.isfinite(mean)).sum())
    if bad_mean:
        raise ValueError(f"{source}: `mean` has {bad_mean} non-finite values (NaN or inf); a bias table's "
                         "statistics must be finite")
    bad_m2 = int((~torch.isfinite(m2)).sum())
    if bad_m2:
        raise ValueError(f"{source}: `m2` has {bad_m2} non-finite values (NaN or inf)")
    negative = int((m2 < 0).sum())
    if negative:
        raise ValueError(f"{source}: `m2` has {negative} negative values (a sum of squares is >= 0)")
    if bool((count < 0).any()):
        raise ValueError(f"{source}: `count` has negative values ({count.min().item()}); counts are >= 0")


def _check_tensors(mean: Tensor, m2: Tensor, count: Tensor, *, source: str) -> None:
    if not isinstance(mean, Tensor) or mean.dim() != 2 or mean.dtype != torch.float32:
        raise ValueError(f"{source}: `mean` must be a float32 tensor [L, V], got "
                         f"{getattr(mean, 'dtype', type(mean).__name__)} {list(getattr(mean, 'shape', []))}")
    if mean.shape[0] == 0 or mean.shape[1] == 0:
        raise ValueError(f"{source}: `mean` must be non-empty, got shape {list(mean.shape)}")
    if not isinstance(m2, Tensor) or m2.shape != mean.shape or m2.dtype != torch.float32:
        raise ValueError(f"{source}: `m2` must be float32 {list(mean.shape)} like `mean`, got "
                         f"{getattr(m2, 'dtype', None)} {list(getattr(m2, 'shape', []))}")
    if not isinstance(count, Tensor) or count.shape != (mean.shape[0],) or count.dtype != torch.int64:
        raise ValueError(f"{source}: `count` must be int64 [L] = [{mean.shape[0]}], got "
                         f"{getattr(count, 'dtype', None)} {list(getattr(count, 'shape', []))}")


def _check_aligned_logprob(lp: Tensor, mean: Tensor, *, source: str) -> None:
    """ValueError naming the field unless `aligned_logprob` is float32 shaped like `mean`, finite and <= 0 (a mean
    of log-probabilities)."""
    if not isinstance(lp, Tensor) or lp.dtype != torch.float32 or lp.shape != mean.shape:
        raise ValueError(f"{source}: `aligned_logprob` must be float32 {list(mean.shape)} like `mean`, got "
                         f"{getattr(lp, 'dtype', type(lp).__name__)} {list(getattr(lp, 'shape', []))}")
    bad = int((~torch.isfinite(lp)).sum())
    if bad:
        raise ValueError(f"{source}: `aligned_logprob` has {bad} non-finite values (NaN or inf)")
    positive = int((lp > _LOGPROB_SLACK).sum())
    if positive:
        raise ValueError(f"{source}: `aligned_logprob` has {positive} values > 0 (a mean of log-probabilities is "
                         "<= 0)")
