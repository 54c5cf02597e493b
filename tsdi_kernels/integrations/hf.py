"""Hugging Face generation with the TSDI bias, two ways that draw from the same distribution.

1. TSDILogitsProcessor: a LogitsProcessor for model.generate(logits_processor=[...]). Works with every decoding
   mode (greedy, sampling, beam search); HF's warpers and torch.multinomial do the rest.
2. generate() / fused_sampler(): transformers' `generate(custom_generate=callable)` hook with a decoding loop
   whose token-selection step is one torch.ops.tsdi.debias_sample call (debias + temperature + top-k + top-p +
   min-p + Gumbel-max draw, fused), replacing HF's Temperature/TopK/TopP/MinP warpers, softmax and multinomial.
   Any other logits processor (repetition penalty, min length, bad words, ...) still runs before it, as in HF.

Answer position t = input_ids.shape[1] - prompt_length, the same for every row: a left-padded batch's prompt
length is the padded length, so row b's t-th generated token is always its t-th answer token.

The fused loop is GenerationMixin._sample of the supported transformers versions step for step (prefill, cache
and model-kwargs updates, next-step inputs, compiled forward), so it equals model.generate with the processor on
every architecture (tests/test_architectures.py builds each causal LM type tiny). Where it cannot (beam search,
assisted or contrastive decoding, synchronised GPUs, warpers it does not fuse, ...), `generate` runs
model.generate with TSDILogitsProcessor and warns in one line; `fused_sampler` raises FusedUnsupported.
"""
from __future__ import annotations

import re
import warnings
from typing import Optional, Sequence, Union

import torch
import transformers
from torch import Tensor

# The fused loop follows GenerationMixin._sample of these versions (identical in 5.17, 5.19 and 5.24, the versions
# tested: tests/test_architectures.py runs in the main suite and in the vLLM tier); an older or a next major
# version may decode differently, so it is refused here, at import, rather than generating different tokens.
SUPPORTED_TRANSFORMERS = ">=5.17,<6"
_SUPPORTED_RANGE = ((5, 17), (6, 0))


def check_transformers_version(version: str) -> None:
    """ImportError naming the installed and the supported transformers versions, unless `version` is supported."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or not _SUPPORTED_RANGE[0] <= (int(match[1]), int(match[2])) < _SUPPORTED_RANGE[1]:
        raise ImportError(f"tsdi_kernels' Hugging Face integration supports transformers{SUPPORTED_TRANSFORMERS} "
                          f"(its fused generate follows those versions' decoding loop), but transformers {version} "
                          f"is installed: pip install 'transformers{SUPPORTED_TRANSFORMERS}'")


check_transformers_version(transformers.__version__)

from transformers import LogitsProcessor  # noqa: E402  (after the version check)
from transformers.generation import logits_process as _lp  # noqa: E402
from transformers.generation.configuration_utils import GenerationMode  # noqa: E402

from ..kernels import check_tokens, debias_sample
from ..kernels.validation import check_strength
from ..pipeline.bias import BiasTable

BiasLike = Union[BiasTable, Tensor]
SeedLike = Union[int, Sequence[int], Tensor]

# Warpers the fused op implements, in the order HF applies them (GenerationMixin._get_logits_processor).
_FUSED_WARPERS = (_lp.TemperatureLogitsWarper, _lp.TopKLogitsWarper, _lp.TopPLogitsWarper, _lp.MinPLogitsWarper)
# Warpers it does not implement (getattr: not every transformers version has all of them).
_OTHER_WARPERS = tuple(getattr(_lp, name) for name in (
    "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "TopHLogitsWarper")
    if hasattr(_lp, name))


def bias_tensor(bias: Optional[BiasLike], name: str = "bias") -> Optional[Tensor]:
    """The [L, V] float32 mean of a BiasTable, or a validated [L, V] tensor (None stays None)."""
    if bias is None:
        return None
    if isinstance(bias, BiasTable):
        return bias.mean
    if not isinstance(bias, Tensor) or bias.dim() != 2 or bias.shape[0] == 0:
        raise ValueError(f"`{name}` must be a BiasTable or a non-empty tensor [L, V], got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    if not bias.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {bias.dtype}")
    return bias.float()


class TSDILogitsProcessor(LogitsProcessor):
    """Subtract ``strength * bias[t]`` from the scores at answer step t < L (t = tokens generated so far).

    Parameters
    ----------
    bias : BiasTable or float tensor [L, V]
    prompt_length : int, the (padded) length of the prompt passed to generate, i.e. input_ids.shape[1].
    strength : float, 1.0 removes the estimated bias; 0 disables; > 1 over-corrects.

    Examples
    --------
    >>> inputs = tokenizer(prompts, return_tensors="pt", padding=True)   # padding_side="left"
    >>> proc = TSDILogitsProcessor(table, prompt_length=inputs.input_ids.shape[1])
    >>> model.generate(**inputs, logits_processor=[proc], do_sample=True, max_new_tokens=64)
    """

    def __init__(self, bias: BiasLike, prompt_length: int, strength: float = 1.0):
        self.bias = bias_tensor(bias)
        if self.bias is None:
            raise ValueError("`bias` must be a BiasTable or a tensor [L, V], got None")
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            raise ValueError(f"`prompt_length` must be a non-negative integer, got {prompt_length!r}")
        self.prompt_length = prompt_length
        self.strength = check_strength(strength)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = input_ids.shape[1] - self.prompt_length
        if t < 0:
            raise ValueError(f"TSDILogitsProcessor: input_ids has {input_ids.shape[1]} tokens, fewer than "
                             f"`prompt_length` = {self.prompt_length}")
        if t >= self.bias.shape[0] or self.strength == 0.0:
            return scores
        if scores.shape[-1] != self.bias.shape[1]:
            raise ValueError(f"TSDILogitsProcessor: `bias` has V = {self.bias.shape[1]} but the scores have "
                             f"V = {scores.shape[-1]}: the table belongs to another vocabulary")
        if self.bias.device != scores.device:
            self.bias = self.bias.to(scores.device)  # once: later steps find it there
        return scores - self.strength * self.bias[t].to(scores.dtype)


def row_seeds(seed: SeedLike, batch: int, device) -> Tensor:
    """int64 [B]. An int s gives rows s, s+1, ..., s+B-1 (so the rows of one call, e.g. num_return_sequences
    copies of a prompt, differ); a list / tensor gives each row its own seed (then a row's tokens do not depend
    on the rest of the batch)."""
    if isinstance(seed, bool):
        raise ValueError(f"`seed` must be an integer or a per-row list / tensor of integers, got {seed!r}")
    if isinstance(seed, int):
        return seed + torch.arange(batch, dtype=torch.int64, device=device)
    if isinstance(seed, Tensor):
        if seed.is_floating_point() or seed.dim() != 1:
            raise ValueError(f"`seed` tensor must be 1-D of integers, got {seed.dtype} {list(seed.shape)}")
        values = seed.to(device=device, dtype=torch.int64)
    elif isinstance(seed, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
        values = torch.tensor(list(seed), dtype=torch.int64, device=device)
    else:
        raise ValueError(f"`seed` must be an integer or a per-row list / tensor of integers, got {seed!r:.80}")
    if values.shape[0] != batch:
        raise ValueError(f"`seed` has {values.shape[0]} entries but the batch has {batch} rows "
                         "(after num_return_sequences expansion)")
    return values


class FusedUnsupported(NotImplementedError):
    """The fused loop cannot reproduce model.generate for these arguments (the message says why): `generate`
    then runs model.generate with TSDILogitsProcessor instead; a direct `fused_sampler` user gets this error.
    Raised before any forward pass. `reason`: why, in a few words; `prompt_length`: the length of the input_ids HF
    prepared (where the answer starts)."""

    def __init__(self, reason: str, prompt_length: Optional[int] = None):
        hint = "" if prompt_length is None else "; use model.generate(logits_processor=[TSDILogitsProcessor(...)])"
        super().__init__(reason + hint)
        self.reason, self.prompt_length = reason, prompt_length


def split_processors(logits_processor, do_sample: bool):
    """(other processors, temperature, top_k, top_p, min_p) from HF's prepared processor list: the fused op takes
    over TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper, which HF appends in that
    order after all other processors. Reading the warpers HF built (rather than the generation config) gives HF's
    defaults for free, e.g. top_k=50."""
    others, temperature, top_k, top_p, min_p = [], 1.0, 0, 1.0, 0.0
    seen_warper = False
    for proc in logits_processor or []:
        if isinstance(proc, _OTHER_WARPERS):
            raise FusedUnsupported(f"the fused sampler does not implement {type(proc).__name__}")
        if isinstance(proc, _FUSED_WARPERS):
            seen_warper = True
            if isinstance(proc, _lp.TemperatureLogitsWarper):
                temperature = float(proc.temperature)
            elif isinstance(proc, _lp.TopKLogitsWarper):
                top_k = int(proc.top_k)
            elif getattr(proc, "min_tokens_to_keep", 1) > 1:
                raise FusedUnsupported(f"the fused sampler supports {type(proc).__name__} with min_tokens_to_keep=1 "
                                       "only")
            elif isinstance(proc, _lp.TopPLogitsWarper):
                top_p = float(proc.top_p)
            else:
                min_p = float(proc.min_p)
            continue
        if seen_warper:
            raise FusedUnsupported(f"{type(proc).__name__} runs after HF's sampling warpers; the fused sampler "
                                   "applies them last and cannot honour that order")
        others.append(proc)
    if not do_sample:
        temperature, top_k, top_p, min_p = 0.0, 0, 1.0, 0.0  # greedy: argmax of the debiased scores
    return others, temperature, top_k, top_p, min_p


def _decode_inputs(model, input_ids, model_kwargs):
    """The next decoding step's forward inputs, as GenerationMixin._sample builds them in every supported version:
    `next_sequence_length` is passed to every model, whether or not its override names it (Phi-3's takes it through
    **kwargs and resets its cache at the long-rope switch: a loop that left it out fed the whole sequence again)."""
    step = 1 if model_kwargs["use_cache"] else None
    return model.prepare_inputs_for_generation(input_ids, next_sequence_length=step, **model_kwargs)


def _decode_forward(model, model_kwargs, generation_config):
    """HF's choice of forward for decoding steps: the compiled call where HF would compile (static caches),
    else the module itself."""
    if model._valid_auto_compile_criteria(model_kwargs, generation_config):
        return model.get_compiled_call(generation_config.compile_config)
    return model.__call__


def _unfused_reason(model, generation_config, synced_gpus: bool) -> Optional[str]:
    """Why GenerationMixin would not run its `_sample` loop (the one the fused loop mirrors) here, or None."""
    mode = generation_config.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        return f"{mode.value.replace('_', ' ')} is not the sampling loop the fused sampler mirrors"
    if synced_gpus:
        return "synced_gpus (DeepSpeed ZeRO-3 / FSDP) needs HF's synchronised loop"
    if model.config.is_encoder_decoder:
        return "encoder-decoder models are not supported by the fused loop"
    if generation_config.return_dict_in_generate and (generation_config.output_attentions
                                                      or generation_config.output_hidden_states):
        return "output_attentions / output_hidden_states are not collected by the fused loop"
    return None


def fused_sampler(bias: Optional[BiasLike] = None, *, strength: float = 1.0, seed: SeedLike = 0, streamer=None):
    """A `custom_generate` callable for model.generate that debiases and samples in one fused op.

    >>> model.generate(**inputs, custom_generate=fused_sampler(table, seed=[1, 2]), do_sample=True, top_p=0.9)
    """
    table = bias_tensor(bias)
    strength = check_strength(strength)
    if not isinstance(seed, (int, list, tuple, Tensor)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an integer or a per-row list / tensor of integers, got {seed!r:.80}")
    captured_streamer = streamer

    @torch.no_grad()
    def tsdi_fused_sample(model, input_ids, logits_processor, stopping_criteria, generation_config,
                          synced_gpus=False, streamer=None, **model_kwargs):
        streamer = streamer if streamer is not None else captured_streamer
        batch, prompt_length = input_ids.shape
        device = input_ids.device
        try:
            reason = _unfused_reason(model, generation_config, synced_gpus)
            if reason is not None:
                raise FusedUnsupported(reason)
            others, temperature, top_k, top_p, min_p = split_processors(logits_processor,
                                                                        generation_config.do_sample)
        except FusedUnsupported as err:
            raise FusedUnsupported(err.reason, prompt_length) from None
        seeds = row_seeds(seed, batch, device)
        # per-row parameters as tensors once, not rebuilt from scalars at every step
        temperature = torch.full((batch,), temperature, dtype=torch.float32, device=device)
        top_k = torch.full((batch,), top_k, dtype=torch.int64, device=device)
        top_p = torch.full((batch,), top_p, dtype=torch.float32, device=device)
        min_p = torch.full((batch,), min_p, dtype=torch.float32, device=device) if min_p > 0 else 0.0
        bias_dev = None if table is None else table.to(device)
        pad = generation_config._pad_token_tensor
        has_eos = any(hasattr(c, "eos_token_id") for c in stopping_criteria)
        if has_eos and pad is None:
            raise ValueError("generation stops at eos but no pad_token_id is set to fill finished rows")
        want_scores = generation_config.return_dict_in_generate and generation_config.output_scores
        want_logits = generation_config.return_dict_in_generate and generation_config.output_logits
        scores, raw_logits = (), ()
        unfinished = torch.ones(batch, dtype=torch.long, device=device)

        # GenerationMixin._sample, step for step: its forward choice, its prefill (cache set-up, chunking), its
        # decode-time model optimisation, then per step: model-kwargs update, logits, token, next inputs.
        model_forward = _decode_forward(model, model_kwargs, generation_config)
        outputs = model._prefill(input_ids, generation_config, model_kwargs,
                                 is_first_iteration=not generation_config.is_assistant)
        with model._optimize_model_for_decode():
            while True:
                model_kwargs = model._update_model_kwargs_for_generation(
                    outputs, model_kwargs, is_encoder_decoder=model.config.is_encoder_decoder)
                logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=device)
                del outputs
                processed = logits
                for proc in others:
                    processed = proc(input_ids, processed)
                t = input_ids.shape[1] - prompt_length
                if bias_dev is not None and bias_dev.shape[1] != processed.shape[1]:
                    raise ValueError(f"`bias` has V = {bias_dev.shape[1]} but the model's logits have "
                                     f"V = {processed.shape[1]}: the table belongs to another vocabulary")
                next_tokens = debias_sample(processed, bias_dev, positions=t, temperature=temperature, top_k=top_k,
                                            top_p=top_p, seed=seeds, strength=strength, min_p=min_p)
                if want_scores:
                    in_range = bias_dev is not None and t < bias_dev.shape[0]
                    scores += (processed - strength * bias_dev[t] if in_range else processed,)
                if want_logits:
                    raw_logits += (logits,)
                # On a GPU the op does not synchronise: a bad row comes back as a negative id (its status code),
                # and none may reach user code (HF's StopStringCriteria indexes an embedding with the ids: a
                # device-side assert instead of the ValueError). With a streamer the step synchronises here anyway:
                # the ids are checked before it sees them. Otherwise the stopping criteria see bad rows clamped to 0
                # and the check runs at the step's one synchronisation below. (On a CPU the op raised already.)
                drawn = next_tokens
                if has_eos:
                    next_tokens = next_tokens * unfinished + pad * (1 - unfinished)
                if streamer is not None:
                    host = torch.stack([drawn, next_tokens]).cpu()
                    if int(host[0].min()) < 0:
                        check_tokens(drawn)
                    streamer.put(host[1])
                else:
                    next_tokens = next_tokens.clamp(min=0)
                input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
                unfinished = unfinished & ~stopping_criteria(input_ids, scores or None)
                running, lowest = torch.stack([unfinished.max().to(torch.int64), drawn.min()]).tolist()
                if lowest < 0:
                    check_tokens(drawn)
                if running == 0:
                    break
                outputs = model_forward(**_decode_inputs(model, input_ids, model_kwargs), return_dict=True)
        if streamer is not None:
            streamer.end()
        if generation_config.return_dict_in_generate:
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            # the cache, as HF returns it (its field is `cache` from 5.20 on, `past_key_values` before)
            cache_key = next((k for k in ("cache", "past_key_values", "cache_params") if k in model_kwargs), None)
            cache_field = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"
            return GenerateDecoderOnlyOutput(sequences=input_ids, scores=scores if want_scores else None,
                                             logits=raw_logits if want_logits else None,
                                             **{cache_field: model_kwargs.get(cache_key) if cache_key else None})
        return input_ids

    return tsdi_fused_sample


def generate(model, bias: Optional[BiasLike] = None, strength: float = 1.0, seed: SeedLike = 0,
             **generate_kwargs):
    """model.generate(**generate_kwargs) with the TSDI bias removed and the sampling step fused into one op.

    Honours the generation config as HF does: do_sample (False -> greedy), temperature, top_k (HF's default 50
    when sampling), top_p, min_p, max_new_tokens, eos_token_id(s), pad_token_id, stopping_criteria, streamer, other
    logits processors. `seed`: an int (row b uses seed + b) or one seed per row; row b's noise at answer step t
    is keyed by (seed[b], t), so the same seeds give the same tokens on CPU and GPU.

    >>> out = tsdi_kernels.generate(model, table, seed=0, **inputs, do_sample=True, top_p=0.9, max_new_tokens=32)
    """
    if "custom_generate" in generate_kwargs:
        raise ValueError("`custom_generate` is set by tsdi_kernels.generate; call model.generate directly instead")
    if generate_kwargs.get("assistant_model") is not None:
        # HF hands a custom_generate callable no assistant: this is the one mode the callable cannot see
        return _processor_generate(model, bias, strength, "assisted decoding (assistant_model) is not the sampling "
                                   "loop the fused sampler mirrors", None, generate_kwargs)
    sampler = fused_sampler(bias, strength=strength, seed=seed, streamer=generate_kwargs.get("streamer"))
    try:
        return model.generate(custom_generate=sampler, **generate_kwargs)
    except FusedUnsupported as err:  # raised before any forward pass
        return _processor_generate(model, bias, strength, err.reason, err.prompt_length,
                                   generate_kwargs)


class _AfterPrompt:
    """A streamer for the second generate call of a fallback: the first call already streamed the prompt."""

    def __init__(self, streamer):
        self.streamer, self.prompt_seen = streamer, False

    def put(self, value):
        if self.prompt_seen:
            self.streamer.put(value)
        self.prompt_seen = True

    def end(self):
        self.streamer.end()


def _processor_generate(model, bias, strength, reason: str, prompt_length: Optional[int], generate_kwargs):
    """model.generate with TSDILogitsProcessor (the same distribution), announced in one line."""
    warnings.warn(f"tsdi_kernels.generate: {reason}; running model.generate with TSDILogitsProcessor instead "
                  "(the same distribution; HF draws with torch's generator, so `seed` is not used)", stacklevel=3)
    kwargs = dict(generate_kwargs)
    if prompt_length is None:
        inputs = kwargs.get("input_ids", kwargs.get("inputs"))
        if inputs is None:
            raise ValueError("tsdi_kernels.generate needs `input_ids` (or `inputs`) to know where the answer starts")
        prompt_length = inputs.shape[1]
    elif kwargs.get("streamer") is not None:
        kwargs["streamer"] = _AfterPrompt(kwargs["streamer"])
    if bias is not None:
        processors = list(kwargs.pop("logits_processor", None) or [])
        kwargs["logits_processor"] = [*processors, TSDILogitsProcessor(bias, prompt_length, strength)]
    return model.generate(**kwargs)


def encode_prompts(tokenizer, prompts: Sequence[str], *, chat_template: bool = True) -> dict:
    """Left-padded input_ids / attention_mask of user prompts, generation starting at the right edge (so the answer
    position t is the same for every row). With `chat_template` and a tokenizer that has one, each prompt is a user
    turn of the template with the generation prompt appended; otherwise the raw text with the special tokens."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        if chat_template and getattr(tokenizer, "chat_template", None):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=False) for p in prompts]
            return dict(tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt"))
        return dict(tokenizer(list(prompts), padding=True, return_tensors="pt"))
    finally:
        tokenizer.padding_side = side

