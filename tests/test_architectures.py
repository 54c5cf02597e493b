"""The fused generate equals model.generate with TSDILogitsProcessor on every causal-LM architecture the installed
transformers ships, built tiny (2 layers, hidden 64, V = 512, random weights).

The types are enumerated from transformers' MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, not hand-picked. A type is skipped,
with the reason, where HF itself cannot be used at that size: its config rejects the tiny sizes, the model keeps
more than MAX_PARAMS parameters (sub-models or tables the sizes do not reach), building it raises, or HF's own
generate raises on the batch below (multimodal inputs it needs, a cache it cannot build at 2 layers, ...). What HF
can generate, the fused loop must reproduce exactly: the same tokens and bit-identical scores, greedy, at strength 0
and at a non-zero strength, on a batch with a left-padded row. Sampling with per-row seeds must give a row the same
tokens alone as inside the batch.

Run under the main suite's transformers and under the vLLM tier's (scripts/test_vllm.sh)."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import tsdi_kernels
from tsdi_kernels import TSDILogitsProcessor

V = 512
PAD, BOS, EOS = 0, 1, 2
# Set on a config (and on its text / vision / audio sub-configs) only where the config has the attribute.
TINY = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=PAD, bos_token_id=BOS,
            eos_token_id=EOS, num_experts=4, num_local_experts=4, n_routed_experts=4, moe_intermediate_size=32,
            num_experts_per_tok=2, n_shared_experts=1)
SUB_CONFIGS = ("text_config", "vision_config", "audio_config")
# Tiny models at these sizes have 0.1 to 4.5 M parameters; a type that keeps more ignores the sizes somewhere.
MAX_PARAMS = 5_000_000
PROMPT, NEW_TOKENS, L = 7, 10, 6
TYPES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # tests/conftest.py: one intra-op thread


def _tiny_kwargs(config: PretrainedConfig) -> dict:
    kwargs = {key: value for key, value in TINY.items() if hasattr(config, key)}
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and layer_types:
        # one layer of each kind the full model has, first ones first (a hybrid keeps its attention and its
        # recurrent layer), repeated up to the tiny depth
        kinds = sorted(set(layer_types), key=list(layer_types).index)[:TINY["num_hidden_layers"]]
        kwargs["layer_types"] = (kinds * TINY["num_hidden_layers"])[:TINY["num_hidden_layers"]]
    return kwargs


def tiny_config(model_type: str) -> PretrainedConfig:
    default = AutoConfig.for_model(model_type)
    kwargs = _tiny_kwargs(default)
    for name in SUB_CONFIGS:
        sub = getattr(default, name, None)
        if isinstance(sub, PretrainedConfig):
            kwargs[name] = {**sub.to_dict(), **_tiny_kwargs(sub)}
    while True:
        try:
            return AutoConfig.for_model(model_type, **kwargs)
        except AttributeError as err:  # a read-only property (falcon's head_dim, mamba's layer_types, or one
            # that layer_types feeds, bamba's layers_block_type): derived by the config itself, left to it
            read_only = [key for key in kwargs if f"property '{key}'" in str(err)] or [
                key for key in ("layer_types",) if key in kwargs and "property" in str(err)]
            if not read_only:
                raise
            del kwargs[read_only[0]]


def _inputs():
    """3 prompts of PROMPT tokens, row 1 left-padded by 3, ids clear of the special ones."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(EOS + 1, V, (3, PROMPT), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :3], attention_mask[1, :3] = PAD, 0
    bias = torch.randn(L, V, generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask), bias


GREEDY = dict(do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=PAD, return_dict_in_generate=True,
              output_scores=True)


def _hf_greedy(model, inputs, bias, strength):
    return model.generate(**inputs, logits_processor=[TSDILogitsProcessor(bias, PROMPT, strength)], **GREEDY)


_BUILT: dict = {}  # model type -> (model, HF's greedy output at strength 0) or the reason to skip


def _build(model_type: str):
    try:
        config = tiny_config(model_type)
    except Exception as err:  # the config's own validation rejects the tiny sizes
        return f"{model_type}: its config rejects the tiny sizes ({type(err).__name__}: {str(err)[:160]})"
    try:
        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        if params > MAX_PARAMS:
            return f"{model_type}: {params / 1e6:.0f} M parameters at the tiny sizes (some part ignores them)"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    except Exception as err:
        return f"{model_type}: HF cannot build it tiny ({type(err).__name__}: {str(err)[:160]})"
    inputs, bias = _inputs()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = _hf_greedy(model, inputs, bias, 0.0)
    except Exception as err:
        return f"{model_type}: HF's own generate raises ({type(err).__name__}: {str(err)[:160]})"
    return model, reference


def tiny_model(model_type: str):
    """The tiny model of this type, built once per module, and HF's greedy output at strength 0; skips with the
    reason where HF cannot build or generate with it."""
    if model_type not in _BUILT:
        _BUILT[model_type] = _build(model_type)
    built = _BUILT[model_type]
    if isinstance(built, str):
        pytest.skip(built)
    return built


def _assert_same_generation(got, expected):
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == NEW_TOKENS
    for step, (a, b) in enumerate(zip(got.scores, expected.scores)):
        # bit-identical: the same forward passes and the same subtraction of strength * bias[t] in float32
        assert torch.equal(a, b), f"scores differ at step {step}: max |diff| {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("model_type", TYPES)
def test_fused_greedy_equals_hf(model_type):
    model, reference = tiny_model(model_type)
    inputs, bias = _inputs()
    _assert_same_generation(tsdi_kernels.generate(model, bias, strength=0.0, **inputs, **GREEDY), reference)
    expected = _hf_greedy(model, inputs, bias, 2.0)
    _assert_same_generation(tsdi_kernels.generate(model, bias, strength=2.0, **inputs, **GREEDY), expected)
    # the bias reaches the scores of the first L steps (strength 2 against 0), and only those
    assert not torch.equal(expected.scores[0], reference.scores[0])


@pytest.mark.parametrize("model_type", TYPES)
def test_seeded_sampling_is_batch_invariant(model_type):
    """Row b's noise is keyed by (seed[b], t): the left-padded row sampled alone equals that row in the batch."""
    model, _ = tiny_model(model_type)
    inputs, bias = _inputs()
    kwargs = dict(do_sample=True, temperature=1.5, top_k=0, max_new_tokens=NEW_TOKENS, pad_token_id=PAD)
    batch = tsdi_kernels.generate(model, bias, seed=[5, 6, 7], **inputs, **kwargs)
    alone = tsdi_kernels.generate(model, bias, seed=[6], **{k: v[1:2] for k, v in inputs.items()}, **kwargs)
    assert torch.equal(batch[1:2], alone)


def test_enumeration_reaches_the_common_architectures():
    """The enumeration is transformers' own list: the architectures users bring most are in it."""
    assert {"llama", "mistral", "qwen2", "gemma2", "phi3", "gpt2", "mamba"} <= set(TYPES), transformers.__version__
