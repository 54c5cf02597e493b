"""Fused TSDI generation vs Hugging Face generate with TSDILogitsProcessor, same model, prompts and settings.

    pytest benchmarks/bench_generate.py --benchmark-enable -s

Two models with a tiny body (hidden 64, 2 layers) so that the sampling step is a visible part of each decoding
step: vocabulary 512, and 128256 (Llama 3's), where HF's pipeline (processor, temperature, top-k, top-p with a
full sort, softmax, multinomial) makes several [B, V] passes and the fused op one.
Reported per case (benchmark.extra_info): new tokens per second of the whole generate call, and the time spent in
the sampling step (timed inside one extra generate call by wrapping the per-step sampling calls) per step and as
a share of the call.
The baseline is benchmarks/baselines.py's hf_generate (model.generate with TSDILogitsProcessor).
Roles follow benchmarks/conftest.py's convention ("baseline" / "candidate" in one group); the module also prints
the candidate/baseline ratios itself at the end.
"""
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

import tsdi_kernels
from benchmarks.baselines import hf_generate

BATCH, PROMPT, NEW_TOKENS, BIAS_LENGTH = 8, 16, 32, 16
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9)
VOCABS = {"V512": 512, "V128256": 128256}
_results = {}


def tiny_model(vocab: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    # no eos: every call generates exactly NEW_TOKENS tokens, so both sides do the same work
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="module", params=list(VOCABS), ids=list(VOCABS))
def case(request):
    vocab = VOCABS[request.param]
    model = tiny_model(vocab)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, vocab, (BATCH, PROMPT), generator=gen)
    bias = torch.randn(BIAS_LENGTH, vocab, generator=gen)
    return request.param, model, input_ids, bias


class SamplingTimer:
    """Times the sampling step inside a real generate call by wrapping what each pipeline calls per step:
    HF: LogitsProcessorList.__call__ (TSDI processor + warpers), softmax and torch.multinomial;
    fused: the debias_sample that tsdi_kernels.integrations.hf calls. Used for one extra, unbenchmarked call."""

    def __init__(self, monkeypatch, role):
        self.seconds = 0.0
        if role == "baseline":
            import transformers.generation.utils as gen_utils

            monkeypatch.setattr(LogitsProcessorList, "__call__", self.wrap(LogitsProcessorList.__call__))
            monkeypatch.setattr(torch, "multinomial", self.wrap(torch.multinomial))
            monkeypatch.setattr(gen_utils.nn.functional, "softmax", self.wrap(gen_utils.nn.functional.softmax))
        else:
            from tsdi_kernels.integrations import hf

            monkeypatch.setattr(hf, "debias_sample", self.wrap(hf.debias_sample))

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def sampling_share(run, monkeypatch, role) -> tuple:
    """(sampling seconds per step, share of the generate call) measured in one instrumented call."""
    with monkeypatch.context() as patch:
        timer = SamplingTimer(patch, role)
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    return timer.seconds / NEW_TOKENS, timer.seconds / total


def record(benchmark, name, role, elapsed, step, share):
    info = {"role": role, "new_tokens_per_s": BATCH * NEW_TOKENS / elapsed,
            "sampling_ms_per_step": 1e3 * step, "sampling_share_of_step": share,
            "backend": tsdi_kernels.backends()["debias_sample"]["cpu"], "threads": torch.get_num_threads()}
    benchmark.extra_info.update(info)
    _results.setdefault(name, {})[role] = info


@pytest.mark.parametrize("role", ["baseline", "candidate"])
def test_generate(benchmark, case, role, monkeypatch):
    name, model, input_ids, bias = case
    benchmark.group = f"generate-{name}"
    if role == "baseline":
        run = lambda: hf_generate(model, bias, input_ids, PROMPT, NEW_TOKENS, **SAMPLING)  # noqa: E731
    else:
        run = lambda: tsdi_kernels.generate(model, bias, seed=0, inputs=input_ids,  # noqa: E731
                                            max_new_tokens=NEW_TOKENS, **SAMPLING)
    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (BATCH, PROMPT + NEW_TOKENS)
    elapsed = benchmark.stats.stats.mean if benchmark.stats else _time(run)
    step, share = sampling_share(run, monkeypatch, role)
    record(benchmark, name, role, elapsed, step, share)


def _time(run) -> float:
    """With --benchmark-disable (the default in pyproject) pedantic runs once untimed: time it here instead."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@pytest.fixture(scope="module", autouse=True)
def print_ratios(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else print
    write("")
    write(f"fused generate vs HF generate + TSDILogitsProcessor (B={BATCH}, prompt {PROMPT}, {NEW_TOKENS} new "
          f"tokens, T={SAMPLING['temperature']}, top_k={SAMPLING['top_k']}, top_p={SAMPLING['top_p']})")
    for name, roles in _results.items():
        if {"baseline", "candidate"} <= set(roles):
            b, c = roles["baseline"], roles["candidate"]
            write(f"  {name}: tokens/s HF {b['new_tokens_per_s']:.0f} -> fused {c['new_tokens_per_s']:.0f} "
                  f"(x{c['new_tokens_per_s'] / b['new_tokens_per_s']:.2f}); sampling step "
                  f"{b['sampling_ms_per_step']:.3f} ms ({100 * b['sampling_share_of_step']:.0f}% of a step) -> "
                  f"{c['sampling_ms_per_step']:.3f} ms ({100 * c['sampling_share_of_step']:.0f}%), "
                  f"x{b['sampling_ms_per_step'] / c['sampling_ms_per_step']:.1f} [{c['backend']}]")
