"""estimate_bias on a tiny Llama pair whose aligned model is the reference plus a KNOWN bias at answer positions.

Why the known bias is exactly recoverable: with A = R + b[t], log_softmax(A) - log_softmax(R) = b[t] - s(x) where
s(x) = logsumexp(R + b[t]) - logsumexp(R) depends on the context only through one number per row. The mean is
b[t] minus a per-position constant, which softmax ignores, so the centred estimate must match b[t]."""
import functools
import math
import os
import sys

import pytest
import torch
from safetensors import safe_open
from tiny_models import tiny_llama, tiny_pair, tiny_tokenizer

import tsdi_kernels
from tsdi_kernels import BiasTable, estimate_bias
from tsdi_kernels.kernels import library as _library
from tsdi_kernels.kernels.accumulate import op as _accumulate_op
from tsdi_kernels.kernels.accumulate import reference as _accumulate_reference
from tsdi_kernels.pipeline import estimate as estimate_mod
from tsdi_kernels.pipeline.prompts import PromptTemplate, prompt_batch, token_pool

L = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models on one thread


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
    # the final state is printed once (it used to be printed by the last update and again by close(), with
    # different rates and standard errors, in logs that keep every refresh)
    assert err.count("32/32") == 1, err


def test_records_the_aligned_models_mean_log_probabilities(pair):
    """aligned_logprob = mean log_softmax(aligned) over the same prompts: with the models swapped (same seed, same
    prompts), aligned_logprob - bias is the reference's mean log-probabilities."""
    tok, ref, aligned, _ = pair
    kw = dict(num_prompts=16, batch_size=8, seed=5, progress=False, length=L)
    forward = estimate_bias(aligned, ref, tok, **kw)
    swapped = estimate_bias(ref, aligned, tok, **kw)
    assert forward.aligned_logprob.shape == forward.mean.shape and bool((forward.aligned_logprob <= 1e-3).all())
    torch.testing.assert_close(forward.aligned_logprob - forward.mean, swapped.aligned_logprob, atol=2e-4, rtol=0)
    # the probabilities debiasing at strength 1 gives are the reference's (normalised geometric) mean
    for t in range(L):
        _, p_debiased = forward.moved_probability(t)
        torch.testing.assert_close(p_debiased, torch.softmax(swapped.aligned_logprob[t], -1), atol=1e-5, rtol=1e-4)


def test_checkpoint_without_aligned_logprob_resumes_without_it(pair, tmp_path):
    """A checkpoint written before aligned_logprob existed resumes (the bias is exact) into a table without it."""
    tok, ref, aligned, _ = pair
    kw = dict(num_prompts=24, batch_size=8, seed=6, progress=False, length=L)
    full = estimate_bias(aligned, ref, tok, **kw)
    ckpt = tmp_path / "old.ckpt"
    with pytest.raises(KeyboardInterrupt):
        estimate_bias(Interrupt(aligned, 2, KeyboardInterrupt()), ref, tok, checkpoint=ckpt, **kw)
    old = BiasTable.load(ckpt)
    old.aligned_logprob = None
    old.save(ckpt)
    resumed = estimate_bias(aligned, ref, tok, checkpoint=ckpt, **kw)
    assert resumed.aligned_logprob is None
    for name in ("mean", "m2", "count"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name


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


# --- interrupts, on every backend, and checkpoints validated (issue 11 items 1, 2, 5) ----------------------------

# the CPU backends (Triton serves CUDA tensors; the half-applied update below is simulated whatever the backend)
BACKENDS = [b for b in _library.AVAILABLE["cpu"] if b != "cpp" or _library.HAS_EXTENSION]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with tsdi_kernels.use_backend("cpu", request.param):
        yield request.param


def assert_same_table(a, b):
    for name in ("mean", "m2", "count"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the aligned model's mean log-probabilities resume exactly too (both tables have them)
    assert a.aligned_logprob is not None and b.aligned_logprob is not None
    assert torch.equal(a.aligned_logprob, b.aligned_logprob)


def test_ctrl_c_after_a_partial_last_batch_is_not_counted_twice(pair, tmp_path, monkeypatch, backend):
    """10 prompts in batches of 4: Ctrl-C right after the last (2-row) batch is folded in. The checkpoint must say
    3 batches (count 10), not 10 // 4 = 2, or the resumed run folds the last batch in again (count 12)."""
    tok, ref, aligned, _ = pair
    kw = dict(num_prompts=10, batch_size=4, seed=8, progress=False)
    full = estimate_bias(aligned, ref, tok, length=L, **kw)
    assert full.count.tolist() == [10] * L
    real_max_stderr, calls = estimate_mod._max_stderr, []

    def stderr_then_ctrl_c(acc):  # runs after each batch is folded in, for the progress bar
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_max_stderr(acc)

    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(estimate_mod, "_max_stderr", stderr_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        estimate_bias(aligned, ref, tok, length=L, checkpoint=ckpt, **{**kw, "progress": True})
    monkeypatch.setattr(estimate_mod, "_max_stderr", real_max_stderr)
    assert len(calls) == 3
    assert checkpoint_batches(ckpt) == 3
    resumed = estimate_bias(aligned, ref, tok, length=L, checkpoint=ckpt, **kw)
    assert_same_table(resumed, full)


@pytest.mark.parametrize("which", ["bias", "aligned_logprob"])
def test_ctrl_c_inside_an_update_never_checkpoints_half_a_batch(pair, tmp_path, monkeypatch, backend, which):
    """An update in several steps (Triton launches mean/M2 and count separately) interrupted between them: the
    checkpoint holds the statistics before that batch, and the resumed table is bitwise the uninterrupted one.
    Each batch makes two updates (the bias, then the aligned model's mean log-probabilities, reference=None):
    interrupted inside either one, both are rolled back."""
    tok, ref, aligned, _ = pair
    kw = dict(num_prompts=24, batch_size=8, seed=9, progress=False)
    full = estimate_bias(aligned, ref, tok, length=L, **kw)
    real, calls = _accumulate_op._UPDATE[backend], []

    def half_then_ctrl_c(mean, m2, count, aligned_logits, reference, *args):
        if (reference is None) == (which == "aligned_logprob"):
            calls.append(1)
        if len(calls) < 2:
            return real(mean, m2, count, aligned_logits, reference, *args)
        args = (aligned_logits, reference, *args)
        scratch = [t.clone() for t in (mean, m2, count)]
        real(*scratch, *args)
        mean.copy_(scratch[0])  # mean is updated, M2 and count are not yet ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setitem(_accumulate_op._UPDATE, backend, half_then_ctrl_c)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        estimate_bias(aligned, ref, tok, length=L, checkpoint=ckpt, **kw)
    monkeypatch.setitem(_accumulate_op._UPDATE, backend, real)
    assert checkpoint_batches(ckpt) == 1
    saved = BiasTable.load(ckpt)
    first = estimate_bias(aligned, ref, tok, length=L, num_prompts=8, batch_size=8, seed=9, progress=False)
    assert_same_table(saved, first)  # exactly batch 0, nothing of batch 1
    resumed = estimate_bias(aligned, ref, tok, length=L, checkpoint=ckpt, **kw)
    assert_same_table(resumed, full)


def test_reference_update_is_all_or_nothing_under_ctrl_c():
    """KeyboardInterrupt delivered at every line of the reference logit_mean_update in turn: the statistics are
    always those before the batch or those after it, never a mix (mean updated, M2 / count not)."""
    gen = torch.Generator().manual_seed(0)
    a, r = torch.randn(5, 3, 7, generator=gen), torch.randn(5, 3, 7, generator=gen)
    start = [torch.randn(3, 7, generator=gen), torch.rand(3, 7, generator=gen), torch.full((3,), 4, dtype=torch.int64)]
    after = [t.clone() for t in start]
    _accumulate_reference.logit_mean_update(*after, a, r, None, True)
    code = _accumulate_reference.logit_mean_update.__code__
    lines = sorted({line for _, _, line in code.co_lines() if line is not None and line > code.co_firstlineno})
    interrupted = 0
    for target in lines:
        state = [t.clone() for t in start]

        def tracer(frame, event, arg, target=target):
            if frame.f_code is not code:
                return None
            if event == "line" and frame.f_lineno == target:
                raise KeyboardInterrupt
            return tracer

        sys.settrace(tracer)
        try:
            _accumulate_reference.logit_mean_update(*state, a, r, None, True)
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            sys.settrace(None)
        same = [torch.equal(s, x) for s, x in zip(state, start)]
        done = [torch.equal(s, x) for s, x in zip(state, after)]
        assert all(same) or all(done), (target, same, done)
    assert interrupted >= 5


CKPT_RUN = dict(num_prompts=40, batch_size=8, seed=3, progress=False)
_DROP = object()  # rewrite_checkpoint: remove this metadata key


def make_checkpoint(pair, tmp_path, **kw):
    """A checkpoint after 2 of the 5 batches of 40 prompts (batch size 8), as Ctrl-C leaves it."""
    tok, ref, aligned, _ = pair
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        estimate_bias(Interrupt(aligned, 3, KeyboardInterrupt()), ref, tok, length=L, checkpoint=ckpt,
                      **{**CKPT_RUN, **kw})
    assert checkpoint_batches(ckpt) == 2
    return ckpt


def rewrite_checkpoint(path, *, tensors=None, **meta_changes):
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        stats = {k: f.get_tensor(k) for k in f.keys()}
    stats.update(tensors or {})
    for key, value in meta_changes.items():
        if value is _DROP:
            meta.pop(key)
        else:
            meta[key] = value
    save_file(stats, str(path), metadata=meta)


@pytest.mark.parametrize("change, field", [
    (dict(batches_done="1000000000"), "batches_done"),
    (dict(batches_done="6"), "batches_done"),
    (dict(batches_done="-1"), "batches_done"),
    (dict(batches_done="null"), "batches_done"),
    (dict(batches_done=_DROP), "batches_done"),
    (dict(batches_done="true"), "batches_done"),
    (dict(batches_done="2.0"), "batches_done"),
    (dict(batches_done='"2"'), "batches_done"),
    (dict(batches_done="1"), "count"),          # consistent with count 16 only at 2 batches
    (dict(batches_done="5"), "count"),
    (dict(format_version="true"), "format_version"),
    (dict(kind='"something else"'), "kind"),
    (dict(batch_size="0"), "batch_size"),
    (dict(tensors={"mean": torch.full((L, 320), float("nan"))}), "`mean`"),
    (dict(tensors={"m2": torch.full((L, 320), -1.0)}), "`m2`"),
    (dict(tensors={"count": torch.full((L,), -16, dtype=torch.int64)}), "`count`"),
    (dict(tensors={"count": torch.tensor([16, 16, 8, 16])}), "`count`"),
], ids=lambda v: None if isinstance(v, dict) else v)
def test_bad_checkpoints_are_refused_naming_file_and_field(pair, tmp_path, change, field):
    """A checkpoint is validated, never trusted: batches_done = 10**9 used to return a partial table, a count
    that disagrees with batches_done or NaN means were folded in, missing / null batches_done was a KeyError /
    TypeError. Each is a ValueError naming the file and the field, before any forward pass."""
    tok, ref, aligned, _ = pair
    ckpt = make_checkpoint(pair, tmp_path)
    rewrite_checkpoint(ckpt, **change)
    never = Interrupt(aligned, 1, AssertionError("forward was called"))
    with pytest.raises(ValueError) as info:
        estimate_bias(never, ref, tok, length=L, checkpoint=ckpt, **CKPT_RUN)
    assert field in str(info.value) and str(ckpt) in str(info.value)


@pytest.mark.parametrize("where, message", [
    ("missing/run.ckpt", "does not exist"), ("folder", "is a directory"), ("fifo", "not a regular file"),
    ("file/run.ckpt", "not a folder"),
])
def test_unusable_checkpoint_path_fails_before_any_forward(pair, tmp_path, where, message):
    """A checkpoint in a missing folder used to be found at the first save, after the work (or at the end)."""
    tok, ref, aligned, _ = pair
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    never = Interrupt(aligned, 1, AssertionError("forward was called"))
    with pytest.raises(ValueError, match=message) as info:
        estimate_bias(never, ref, tok, length=L, checkpoint=tmp_path / where, **CKPT_RUN)
    assert "`checkpoint`" in str(info.value)


def test_checkpoint_resume_reads_every_valid_state(pair, tmp_path):
    """Checkpoints of 0 batches and of a finished run are valid: the first resumes from scratch, the second
    returns the table without a forward pass."""
    tok, ref, aligned, _ = pair
    full = estimate_bias(aligned, ref, tok, length=L, checkpoint=tmp_path / "done.ckpt", **CKPT_RUN)
    assert checkpoint_batches(tmp_path / "done.ckpt") == 5
    never = Interrupt(aligned, 1, AssertionError("forward was called"))
    assert_same_table(estimate_bias(never, ref, tok, length=L, checkpoint=tmp_path / "done.ckpt", **CKPT_RUN), full)
    with pytest.raises(KeyboardInterrupt):
        estimate_bias(Interrupt(aligned, 1, KeyboardInterrupt()), ref, tok, length=L,
                      checkpoint=tmp_path / "zero.ckpt", **CKPT_RUN)
    assert checkpoint_batches(tmp_path / "zero.ckpt") == 0
    assert_same_table(estimate_bias(aligned, ref, tok, length=L, checkpoint=tmp_path / "zero.ckpt", **CKPT_RUN), full)
