"""estimate_bias on a tiny Llama pair whose aligned model is the reference plus a KNOWN bias at answer positions.

Why the known bias is exactly recoverable: with A = R + b[t], log_softmax(A) - log_softmax(R) = b[t] - s(x) where
s(x) = logsumexp(R + b[t]) - logsumexp(R) depends on the context only through one number per row. The mean is
b[t] minus a per-position constant, which softmax ignores, so the centred estimate must match b[t]."""
import functools
import math

import pytest
import torch
from safetensors import safe_open
from tiny_models import single_thread, tiny_llama, tiny_pair, tiny_tokenizer

import tsdi_kernels
from tsdi_kernels import BiasTable, estimate_bias
from tsdi_kernels.pipeline import estimate as estimate_mod
from tsdi_kernels.pipeline.prompts import PromptTemplate, prompt_batch, token_pool

L = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(L)


def centred(x):
    return x - x.mean(dim=-1, keepdim=True)


def run(pair, **kw):
    tok, ref, aligned, _ = pair
    kw.setdefault("num_prompts", 32)
    kw.setdefault("batch_size", 16)
    kw.setdefault("progress", False)
    return estimate_bias(aligned, ref, tok, length=L, **kw)


def test_recovers_the_known_bias(pair):
    table = run(pair, num_prompts=48)
    bias = pair[3]
    cos = torch.nn.functional.cosine_similarity(centred(table.mean), centred(bias), dim=-1)
    assert cos.min() >= 0.99, cos
    assert table.count.tolist() == [48] * L
    meta = table.metadata
    assert meta["length"] == L and meta["num_prompts"] == 48 and meta["vocab_size"] == len(pair[0])
    assert meta["aligned"].startswith("biased-") and meta["pool"] == "vocab" and meta["normalize"] is True
    assert meta["tokenizer_fingerprint"].startswith("sha256:") and meta["use_chat_template"] is True


def test_raw_logit_differences_recover_it_too(pair):
    table = run(pair, normalize=False)
    # raw differences are exactly b[t]: the model adds b to the logits
    torch.testing.assert_close(table.mean, pair[3], atol=1e-4, rtol=0)


def test_stderr_shrinks_like_one_over_sqrt_n():
    """N -> 4N halves the standard error. The spread of position t's estimate comes from s(x) alone (all V entries
    of a position share it), so each position gives one ratio; a sample std from N draws has relative error about
    1/sqrt(2N) (12.5% at N=32), so one ratio has about 13% error and the mean over 16 positions about 4%
    (less if positions are independent): 2 +- 20% is a margin of about 5 sigma."""
    tok, ref, aligned, _ = tiny_pair(16)
    small = estimate_bias(aligned, ref, tok, num_prompts=32, length=16, batch_size=32, seed=5, progress=False)
    large = estimate_bias(aligned, ref, tok, num_prompts=128, length=16, batch_size=64, seed=6, progress=False)
    ratio = (small.stderr.mean(dim=1) / large.stderr.mean(dim=1)).mean()
    assert 1.6 <= float(ratio) <= 2.4, float(ratio)


def test_debiased_distributions_equal_the_reference(pair):
    """On fresh prompts, the aligned model minus the estimate gives the reference's next-token distributions at
    each of the first L answer positions, within the standard error (before debiasing they differ by far more)."""
    tok, ref, aligned, _ = pair
    table = run(pair, num_prompts=32)
    template = PromptTemplate.from_tokenizer(tok)
    ids, mask = prompt_batch(template, token_pool(tok), seed=999, batch_index=0, batch_size=6, length=L,
                             prompt_tokens=(4, 12), pad_id=tok.pad_token_id)
    a = estimate_mod.answer_logits(aligned, ids, mask, L).float()
    r = estimate_mod.answer_logits(ref, ids, mask, L).float()
    log_r = torch.log_softmax(r, -1)
    debiased = torch.log_softmax(a - table.mean, -1)
    tolerance = 4 * table.stderr + 1e-4
    assert ((debiased - log_r).abs() <= tolerance).all()
    assert ((torch.log_softmax(a, -1) - log_r).abs() > tolerance).float().mean() > 0.5
    # the same through the fused op's exact distribution
    for t in range(L):
        probs = tsdi_kernels.debias_probs(a[:, t], table.mean, positions=t)
        torch.testing.assert_close(probs, torch.softmax(r[:, t], -1), atol=1e-5, rtol=1e-4)


def test_prompts_put_answer_positions_last(pair):
    tok = pair[0]
    template = PromptTemplate.from_tokenizer(tok)
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    assert template.tail[-1] == assistant and template.head[0] == tok.bos_token_id
    pool = token_pool(tok)
    ids, mask = prompt_batch(template, pool, seed=1, batch_index=3, batch_size=5, length=L, prompt_tokens=(2, 9),
                             pad_id=tok.pad_token_id)
    # the logit at -L (the assistant header) predicts answer token 0
    assert (ids[:, -L] == assistant).all()
    again, _ = prompt_batch(template, pool, seed=1, batch_index=3, batch_size=5, length=L, prompt_tokens=(2, 9),
                            pad_id=tok.pad_token_id)
    assert torch.equal(ids, again)
    other, _ = prompt_batch(template, pool, seed=1, batch_index=4, batch_size=5, length=L, prompt_tokens=(2, 9),
                            pad_id=tok.pad_token_id)
    assert not torch.equal(ids, other)
    # left padding: padding only at the start of a row, none of it special but <pad>
    assert ((mask.cumsum(1) > 0) == mask.bool()).all() and (ids[mask == 0] == tok.pad_token_id).all()
    special = set(tok.all_special_ids)
    assert not any(int(i) in special for i in pool)


def test_pool_from_strings_and_file(pair, tmp_path):
    tok = pair[0]
    texts = ["the quick brown fox", "sorry, I cannot help"]
    table = run(pair, pool=texts, num_prompts=16)
    assert table.metadata["pool"] == "strings:2"
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(texts), encoding="utf-8")
    assert run(pair, pool=str(path), num_prompts=16).metadata["pool"] == "file:corpus.txt"
    allowed = set(tok("\n".join(texts), add_special_tokens=False)["input_ids"])
    assert set(token_pool(tok, str(path)).tolist()) <= allowed


def test_without_chat_template(pair):
    tok, ref, aligned, bias = pair
    plain = tiny_tokenizer(chat_template=False)
    template = PromptTemplate.from_tokenizer(plain)
    assert template.head == [plain.bos_token_id] and template.tail == []
    # no <|assistant|> marker in the prompt: the biased model adds nothing, the estimate is ~0 after centring
    table = estimate_bias(aligned, ref, plain, num_prompts=16, length=L, batch_size=16, progress=False)
    assert table.metadata["use_chat_template"] is False
    assert centred(table.mean).abs().max() < 1e-4


def test_keeps_only_the_answer_logits(pair, monkeypatch):
    tok, ref, aligned, _ = pair
    seen = []
    original = type(ref).forward

    @functools.wraps(original)  # keeps the signature estimate inspects for logits_to_keep
    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("logits_to_keep"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(ref), "forward", spy)
    run(pair, num_prompts=16)
    # one batch: the reference is called with logits_to_keep=L (the aligned wrapper calls it again without)
    assert seen.count(L) == 1


def test_progress_bar_shows_stderr(pair, capsys):
    run(pair, num_prompts=32, progress=True)
    err = capsys.readouterr().err
    assert "32/32" in err and "max_stderr" in err


class Interrupt:
    """Wraps a model; raises `exc` on the `at`-th forward call (1-based)."""

    def __init__(self, model, at, exc):
        self.model, self.at, self.exc, self.calls = model, at, exc, 0
        self.config, self.name_or_path = model.config, model.name_or_path

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def parameters(self):
        return self.model.parameters()

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=None):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=logits_to_keep)

    __call__ = forward


def checkpoint_batches(path):
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["batches_done"])


def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_same_table(pair, tmp_path):
    tok, ref, aligned, _ = pair
    kw = dict(num_prompts=40, batch_size=8, seed=3, progress=False)
    full = estimate_bias(aligned, ref, tok, length=L, **kw)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        estimate_bias(Interrupt(aligned, 3, KeyboardInterrupt()), ref, tok, length=L, checkpoint=ckpt, **kw)
    assert checkpoint_batches(ckpt) == 2  # batches 0 and 1 were folded in, batch 2 was interrupted
    resumed = estimate_bias(aligned, ref, tok, length=L, checkpoint=ckpt, **kw)
    # same updates in the same order on the same inputs: bitwise equal
    for name in ("mean", "m2", "count"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name
    assert checkpoint_batches(ckpt) == 5


def test_periodic_checkpoint_survives_a_crash(pair, tmp_path):
    tok, ref, aligned, _ = pair
    kw = dict(num_prompts=40, batch_size=8, seed=4, progress=False)
    full = estimate_bias(aligned, ref, tok, length=L, **kw)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(RuntimeError, match="power cut"):
        estimate_bias(Interrupt(aligned, 4, RuntimeError("power cut")), ref, tok, length=L, checkpoint=ckpt,
                      checkpoint_every=2, **kw)
    assert checkpoint_batches(ckpt) == 2  # written after batch 1; batch 3 crashed before the next one
    resumed = estimate_bias(aligned, ref, tok, length=L, checkpoint=ckpt, checkpoint_every=2, **kw)
    for name in ("mean", "m2", "count"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name


def test_checkpoint_of_another_run_is_refused(pair, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    run(pair, checkpoint=ckpt, seed=1)
    with pytest.raises(ValueError, match="seed=1"):
        run(pair, checkpoint=ckpt, seed=2)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable estimation checkpoint"):
        run(pair, checkpoint=tmp_path / "junk.ckpt")


def test_vocabulary_mismatch_fails_before_any_forward(pair):
    tok, ref, aligned, _ = pair
    other = Interrupt(tiny_llama(len(tok) + 16, tokenizer=tok), 1, AssertionError("forward was called"))
    with pytest.raises(ValueError, match="same vocabulary"):
        estimate_bias(aligned, other, tok, num_prompts=8, length=L, progress=False)
    small = Interrupt(tiny_llama(100), 1, AssertionError("forward was called"))
    with pytest.raises(ValueError, match="tokenizer has 320 tokens"):
        estimate_bias(small, small, tok, num_prompts=8, length=L, progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_prompts=0), "num_prompts"),
    (dict(num_prompts=2.5), "num_prompts"),
    (dict(length=0), "length"),
    (dict(batch_size=-1), "batch_size"),
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(seed="x"), "seed"),
    (dict(prompt_tokens=(9, 2)), "prompt_tokens"),
    (dict(prompt_tokens=4), "prompt_tokens"),
    (dict(pool=[]), "pool"),
    (dict(pool=42), "pool"),
    (dict(pool="/no/such/corpus.txt"), "pool"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments_name_the_argument(pair, kwargs, name):
    tok, ref, aligned, _ = pair
    args = dict(num_prompts=8, length=L, progress=False)
    args.update(kwargs)
    with pytest.raises((ValueError, FileNotFoundError), match=f"`{name}`"):
        estimate_bias(aligned, ref, tok, **args)


def test_bad_models_and_tokenizer_name_the_argument(pair):
    tok, ref, aligned, _ = pair
    with pytest.raises(ValueError, match="`aligned`"):
        estimate_bias("not a model", ref, tok, num_prompts=8, length=L)
    with pytest.raises(ValueError, match="`reference`"):
        estimate_bias(aligned, 3, tok, num_prompts=8, length=L)
    with pytest.raises(ValueError, match="`tokenizer`"):
        estimate_bias(aligned, ref, None, num_prompts=8, length=L)


def test_table_from_estimate_saves_and_loads(pair, tmp_path):
    table = run(pair)
    table.save(tmp_path / "b.safetensors")
    loaded = BiasTable.load(tmp_path / "b.safetensors", tokenizer=pair[0])
    assert torch.equal(loaded.mean, table.mean) and loaded.metadata["seed"] == 0
    assert math.isfinite(float(loaded.stderr.max()))
