"""Hugging Face integration on a tiny Llama: TSDILogitsProcessor and the fused custom_generate loop agree.

Greedy: token for token. Sampling: the fused op's exact distribution (debias_probs) equals HF's
processor + warpers + softmax at every step (atol 1e-6)."""
import warnings

import pytest
import torch
from tiny_models import tiny_llama, tiny_tokenizer
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import MinPLogitsWarper
from transformers.generation.streamers import BaseStreamer

import tsdi_kernels
from benchmarks.baselines import hf_warpers
from tsdi_kernels import BiasTable, TSDILogitsProcessor, fused_sampler
from tsdi_kernels.integrations import hf as hf_mod

L = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models on one thread


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, seed=3)
    prompts = ["hello there", "Let me think step by step about the quick brown fox", "sorry"]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # left padding
    bias = 3.0 * torch.randn(L, len(tok), generator=torch.Generator().manual_seed(7))
    return tok, model, dict(enc), bias


def hf_generate(model, enc, bias, strength=1.0, **kw):
    proc = TSDILogitsProcessor(bias, enc["input_ids"].shape[1], strength)
    return model.generate(**enc, logits_processor=[proc], **kw)


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.0])
def test_greedy_matches_hf_with_the_processor(setup, strength):
    tok, model, enc, bias = setup
    kw = dict(do_sample=False, max_new_tokens=2 * L)  # beyond L: the bias stops applying
    expected = hf_generate(model, enc, bias, strength, **kw)
    got = tsdi_kernels.generate(model, bias, strength=strength, **enc, **kw)
    assert torch.equal(got, expected)
    # the bias changes the answer (the test has teeth) unless strength is 0
    plain = model.generate(**enc, **kw)
    assert torch.equal(plain, expected) == (strength == 0.0)


def test_greedy_with_eos_and_other_processors(setup):
    """A bias that makes eos the argmax at step 2 stops every row there; finished rows are padded as in HF.
    repetition_penalty runs before the fused op, as HF runs it before the TSDI processor."""
    tok, model, enc, bias = setup
    forced = bias.clone()
    forced[2, tok.eos_token_id] = -1e4
    forced[1, tok.eos_token_id] = 1e4  # not before step 2
    kw = dict(do_sample=False, max_new_tokens=8, repetition_penalty=1.3)
    expected = hf_generate(model, enc, forced, **kw)
    got = tsdi_kernels.generate(model, forced, **enc, **kw)
    assert torch.equal(got, expected)
    prompt_length = enc["input_ids"].shape[1]
    assert got.shape[1] == prompt_length + 3 and (got[:, -1] == tok.eos_token_id).all()


def hf_probs(logits, bias, t, temperature, top_k, top_p):
    """HF's pipeline on one step's raw logits: TSDI processor, then the warpers HF builds, then softmax."""
    procs = [TSDILogitsProcessor(bias, 0)] + hf_warpers(temperature, top_k, top_p)
    fake_ids = torch.zeros(logits.shape[0], t, dtype=torch.long)  # t tokens "generated" since the prompt
    return torch.softmax(LogitsProcessorList(procs)(fake_ids, logits.clone()), -1)


SAMPLING = [  # (generate kwargs, (temperature, top_k, top_p) HF uses)
    (dict(), (1.0, 50, 1.0)),  # HF's default top_k=50 when sampling
    (dict(temperature=0.7, top_p=0.9), (0.7, 50, 0.9)),
    (dict(temperature=1.3, top_k=0, top_p=0.5), (1.3, 0, 0.5)),
    (dict(top_k=7), (1.0, 7, 1.0)),
]


@pytest.fixture
def op_calls(monkeypatch):
    """The (logits, keyword arguments) of every call the fused loop makes to the sampling op, in order."""
    calls = []
    real = hf_mod.debias_sample

    def spy(logits, bias_, **kw):
        calls.append((logits.clone(), kw))
        return real(logits, bias_, **kw)

    monkeypatch.setattr(hf_mod, "debias_sample", spy)
    return calls


@pytest.mark.parametrize("kwargs, params", SAMPLING, ids=["defaults", "T0.7-p0.9", "T1.3-k0-p0.5", "k7"])
def test_fused_step_distribution_equals_hf(setup, op_calls, kwargs, params):
    """Every call the fused loop makes to the op: its exact distribution equals HF's processor + warpers."""
    tok, model, enc, bias = setup
    calls = op_calls
    tsdi_kernels.generate(model, bias, seed=[1, 2, 3], **enc, do_sample=True, max_new_tokens=L + 2, **kwargs)
    assert len(calls) == L + 2
    temperature, top_k, top_p = params
    for t, (logits, kw) in enumerate(calls):
        assert kw["positions"] == t and kw["top_k"].tolist() == [top_k] * 3
        assert kw["temperature"].tolist() == pytest.approx([temperature] * 3)
        assert kw["top_p"].tolist() == pytest.approx([top_p] * 3)
        fused = tsdi_kernels.debias_probs(logits, bias, positions=t, temperature=kw["temperature"],
                                          top_k=kw["top_k"], top_p=kw["top_p"])
        torch.testing.assert_close(fused, hf_probs(logits, bias, t, temperature, top_k, top_p), atol=1e-6, rtol=0)


def test_min_p_is_fused_with_hf_semantics(setup, op_calls):
    """A generation config's min_p reaches the op (no fallback), and each step's exact distribution equals HF's
    processor + Temperature / TopK / TopP / MinP warpers + softmax."""
    tok, model, enc, bias = setup
    calls = op_calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        tsdi_kernels.generate(model, bias, seed=[1, 2, 3], **enc, do_sample=True, temperature=0.8, top_p=0.95,
                              min_p=0.1, max_new_tokens=L + 1)
    assert len(calls) == L + 1
    for t, (logits, kw) in enumerate(calls):
        assert kw["min_p"].tolist() == pytest.approx([0.1] * 3)
        fused = tsdi_kernels.debias_probs(logits, bias, positions=t, temperature=0.8, top_k=50, top_p=0.95,
                                          min_p=0.1)
        procs = [TSDILogitsProcessor(bias, 0)] + hf_warpers(0.8, 50, 0.95) + [MinPLogitsWarper(0.1)]
        fake_ids = torch.zeros(logits.shape[0], t, dtype=torch.long)
        expected = torch.softmax(LogitsProcessorList(procs)(fake_ids, logits.clone()), -1)
        torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)


def test_hf_generate_scores_equal_debias_probs(setup):
    """HF's own sampling run (processor + its warpers): softmax of its scores == debias_probs of its raw logits."""
    tok, model, enc, bias = setup
    torch.manual_seed(0)
    out = hf_generate(model, enc, bias, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=L + 1,
                      output_scores=True, output_logits=True, return_dict_in_generate=True)
    for t, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        fused = tsdi_kernels.debias_probs(logits, bias, positions=t, temperature=0.8, top_k=50, top_p=0.95)
        torch.testing.assert_close(fused, torch.softmax(scores, -1), atol=1e-6, rtol=0)


def test_seeds(setup):
    tok, model, enc, bias = setup
    kw = dict(do_sample=True, max_new_tokens=6)
    a = tsdi_kernels.generate(model, bias, seed=[11, 12, 13], **enc, **kw)
    assert torch.equal(a, tsdi_kernels.generate(model, bias, seed=torch.tensor([11, 12, 13]), **enc, **kw))
    # int seed s means rows s, s+1, s+2
    assert torch.equal(a, tsdi_kernels.generate(model, bias, seed=11, **enc, **kw))
    assert not torch.equal(a, tsdi_kernels.generate(model, bias, seed=[21, 22, 23], **enc, **kw))
    # copies of one prompt (num_return_sequences) get different seeds, hence (almost surely) different answers
    one = {k: v[:1] for k, v in enc.items()}
    many = tsdi_kernels.generate(model, bias, seed=0, **one, num_return_sequences=4, do_sample=True,
                                 max_new_tokens=6)
    assert many.shape[0] == 4 and len({tuple(r) for r in many.tolist()}) > 1
    with pytest.raises(ValueError, match="`seed` has 2 entries"):
        tsdi_kernels.generate(model, bias, seed=[1, 2], **enc, **kw)
    with pytest.raises(ValueError, match="`seed`"):
        tsdi_kernels.generate(model, bias, seed=1.5, **enc, **kw)


def test_row_does_not_depend_on_the_batch(setup):
    """Noise is keyed by (seed[b], t): a row sampled alone equals the same row inside a batch (same padding)."""
    tok, model, enc, bias = setup
    kw = dict(do_sample=True, max_new_tokens=6, temperature=0.9)
    batch = tsdi_kernels.generate(model, bias, seed=[5, 6, 7], **enc, **kw)
    alone = tsdi_kernels.generate(model, bias, seed=[6], **{k: v[1:2] for k, v in enc.items()}, **kw)
    assert torch.equal(batch[1:2], alone)


class Recorder(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


class StopAtLength(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def test_streamer_and_stopping_criteria(setup):
    tok, model, enc, bias = setup
    one = {k: v[:1] for k, v in enc.items()}
    prompt_length = one["input_ids"].shape[1]
    streamer = Recorder()
    out = tsdi_kernels.generate(model, bias, **one, do_sample=False, max_new_tokens=20, streamer=streamer,
                                stopping_criteria=StoppingCriteriaList([StopAtLength(prompt_length + 4)]))
    assert out.shape[1] == prompt_length + 4
    assert streamer.ended and torch.equal(streamer.chunks[0].reshape(-1), one["input_ids"][0])
    assert torch.cat([c.reshape(-1) for c in streamer.chunks[1:]]).tolist() == out[0, prompt_length:].tolist()


def test_return_dict(setup):
    tok, model, enc, bias = setup
    out = tsdi_kernels.generate(model, bias, **enc, do_sample=False, max_new_tokens=3, return_dict_in_generate=True,
                                output_scores=True, output_logits=True)
    assert out.sequences.shape[1] == enc["input_ids"].shape[1] + 3
    assert len(out.scores) == 3 and len(out.logits) == 3
    torch.testing.assert_close(out.scores[0], out.logits[0] - bias[0])


def test_custom_generate_directly_and_bias_table(setup):
    tok, model, enc, bias = setup
    table = BiasTable(bias, torch.zeros_like(bias), torch.full((L,), 10, dtype=torch.int64))
    kw = dict(do_sample=False, max_new_tokens=4)
    direct = model.generate(**enc, custom_generate=fused_sampler(table), **kw)
    assert torch.equal(direct, hf_generate(model, enc, table, **kw))
    # no bias: plain fused sampling, greedy equals HF greedy
    assert torch.equal(tsdi_kernels.generate(model, None, **enc, **kw), model.generate(**enc, **kw))


def test_processor_with_beam_search_and_left_padding(setup):
    """Beam search keeps the processor's t right: a bias that forces token X at answer step 0 and Y at step 1
    puts X, Y first in every row (rows have different prompt lengths, left-padded)."""
    tok, model, enc, _ = setup
    x, y = 100, 200
    bias = torch.zeros(2, len(tok))
    bias[0, x] = bias[1, y] = -1e4
    out = hf_generate(model, enc, bias, num_beams=3, do_sample=False, max_new_tokens=4)
    prompt_length = enc["input_ids"].shape[1]
    assert (out[:, prompt_length] == x).all() and (out[:, prompt_length + 1] == y).all()


UNFUSED = [  # generate kwargs the fused loop cannot reproduce, and the reason it names
    (dict(num_beams=2, do_sample=False), "beam search"),
    (dict(num_beams=2, do_sample=True), "beam sample"),
    (dict(do_sample=True, typical_p=0.5), "TypicalLogitsWarper"),
    (dict(do_sample=True, epsilon_cutoff=3e-4), "EpsilonLogitsWarper"),
]


@pytest.mark.parametrize("kwargs, reason", UNFUSED, ids=[r.split()[0] + "-" + str(i) for i, (_, r) in
                                                         enumerate(UNFUSED)])
def test_unfused_options_fall_back_to_hf_with_a_warning(setup, kwargs, reason):
    """generate runs model.generate with the processor (same seed of torch's generator: the same tokens) and says
    so in one line; the custom_generate callable used directly raises, naming the reason."""
    tok, model, enc, bias = setup
    kw = dict(max_new_tokens=4, **kwargs)
    torch.manual_seed(0)
    expected = hf_generate(model, enc, bias, 0.5, **kw)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=f"{reason}.*running model.generate with TSDILogitsProcessor") as record:
        got = tsdi_kernels.generate(model, bias, strength=0.5, seed=3, **enc, **kw)
    assert len([w for w in record if "tsdi_kernels.generate" in str(w.message)]) == 1
    assert "\n" not in str(record[0].message)
    assert torch.equal(got, expected)
    with pytest.raises(hf_mod.FusedUnsupported, match=f"{reason}.*TSDILogitsProcessor"):
        model.generate(**enc, custom_generate=fused_sampler(bias), **kw)


def test_fallback_streams_the_prompt_once(setup):
    tok, model, enc, bias = setup
    one = {k: v[:1] for k, v in enc.items()}
    streamer = Recorder()
    with pytest.warns(UserWarning, match="TypicalLogitsWarper"):
        out = tsdi_kernels.generate(model, bias, **one, do_sample=True, typical_p=0.5, max_new_tokens=3,
                                    streamer=streamer)
    assert streamer.ended and torch.equal(streamer.chunks[0].reshape(-1), one["input_ids"][0])
    generated = out[0, one["input_ids"].shape[1]:].tolist()
    assert torch.cat([c.reshape(-1) for c in streamer.chunks[1:]]).tolist() == generated


def test_assisted_decoding_falls_back(setup):
    tok, model, enc, bias = setup
    one = {k: v[:1] for k, v in enc.items()}  # HF's assisted decoding takes one row
    kw = dict(do_sample=False, max_new_tokens=4)
    expected = hf_generate(model, one, bias, 1.0, assistant_model=model, **kw)
    with pytest.warns(UserWarning, match="assisted decoding"):
        got = tsdi_kernels.generate(model, bias, **one, assistant_model=model, **kw)
    assert torch.equal(got, expected)


def test_custom_generate_is_refused(setup):
    tok, model, enc, bias = setup
    with pytest.raises(ValueError, match="custom_generate"):
        tsdi_kernels.generate(model, bias, **enc, custom_generate=lambda **kw: None)


@pytest.mark.parametrize("version, supported", [("5.17.0", True), ("5.19.0", True), ("5.24.0", True),
                                                ("5.99.1.dev0", True), ("5.16.1", False), ("4.57.3", False),
                                                ("6.0.0", False), ("unknown", False)])
def test_transformers_version_check(monkeypatch, version, supported):
    if supported:
        hf_mod.check_transformers_version(version)
    else:
        with pytest.raises(ImportError, match=f"transformers{hf_mod.SUPPORTED_TRANSFORMERS}.*transformers "
                                              f"{version} is installed"):
            hf_mod.check_transformers_version(version)


def test_unsupported_transformers_refused_at_import():
    """Importing the integration under another transformers version (patched before the import) fails by name."""
    import subprocess
    import sys

    code = ("import transformers; transformers.__version__ = '4.56.0'\n"
            "try:\n    import tsdi_kernels.integrations.hf\nexcept ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "transformers 4.56.0 is installed" in out.stdout and hf_mod.SUPPORTED_TRANSFORMERS in out.stdout, out


@pytest.mark.parametrize("kwargs, match", [
    (dict(bias=None, prompt_length=3), "`bias`"),
    (dict(bias=torch.zeros(4), prompt_length=3), "`bias`"),
    (dict(bias=torch.zeros(2, 4, dtype=torch.long), prompt_length=3), "`bias`"),
    (dict(bias=torch.zeros(2, 4), prompt_length=-1), "`prompt_length`"),
    (dict(bias=torch.zeros(2, 4), prompt_length=2.0), "`prompt_length`"),
    (dict(bias=torch.zeros(2, 4), prompt_length=3, strength=float("nan")), "`strength`"),
], ids=["none", "1d", "int", "negative-length", "float-length", "nan-strength"])
def test_processor_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TSDILogitsProcessor(**kwargs)


def test_processor_checks_at_call_time():
    proc = TSDILogitsProcessor(torch.ones(2, 4), prompt_length=3)
    scores = torch.zeros(2, 4)
    torch.testing.assert_close(proc(torch.zeros(2, 3, dtype=torch.long), scores), -torch.ones(2, 4))
    torch.testing.assert_close(proc(torch.zeros(2, 5, dtype=torch.long), scores), scores)  # t = 2 >= L
    with pytest.raises(ValueError, match="fewer than `prompt_length`"):
        proc(torch.zeros(2, 2, dtype=torch.long), scores)
    with pytest.raises(ValueError, match="another vocabulary"):
        proc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 5))


def test_fused_bias_vocabulary_mismatch(setup):
    tok, model, enc, _ = setup
    with pytest.raises(ValueError, match="another vocabulary"):
        tsdi_kernels.generate(model, torch.zeros(2, len(tok) + 1), **enc, max_new_tokens=2)
    with pytest.raises(ValueError, match="`strength`"):
        tsdi_kernels.generate(model, torch.zeros(2, len(tok)), strength=float("inf"), **enc, max_new_tokens=2)
