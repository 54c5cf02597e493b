"""The fused generate loop never hands a bad row's status code (a negative id) to user code.

On a GPU, torch.ops.tsdi.debias_sample does not synchronise: a row with NaN logits comes back as a negative id
(kernels/status.py), and the loop must raise the op's ValueError before the id reaches the streamer or the
stopping criteria (HF's StopStringCriteria indexes an embedding with the ids: a device-side assert poisoning the
CUDA context). Checked on CPU with the op's GPU behaviour (codes returned, nothing raised) and NaN logits from a
logits processor at one step."""
import pytest
import torch
from tiny_models import tiny_llama, tiny_tokenizer
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import tsdi_kernels
from tsdi_kernels.integrations import hf as hf_mod
from tsdi_kernels.kernels import status

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models on one thread
BAD_ROW, BAD_STEP = 1, 2


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), tokenizer=tok, seed=3)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("hello there", "sorry", "the quick brown fox")]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return model, dict(enc)


def gpu_like_sample(logits, bias=None, **kwargs):
    """debias_sample as it behaves on a GPU: a NaN row comes back as its status code, nothing is raised."""
    nan_rows = torch.isnan(logits).any(dim=1)
    tokens = tsdi_kernels.debias_sample(torch.nan_to_num(logits, nan=0.0), bias, **kwargs)
    return torch.where(nan_rows, torch.full_like(tokens, status.ERR_NAN), tokens)


class NanAtStep(LogitsProcessor):
    """Row BAD_ROW's scores become NaN at answer step BAD_STEP (a model gone numerically bad)."""

    def __init__(self, prompt_length):
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == BAD_STEP:
            scores = scores.clone()
            scores[BAD_ROW] = float("nan")
        return scores


class Streamed(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        pass


class SeenIds(StoppingCriteria):
    """Records the smallest id it is shown at each call (HF's StopStringCriteria would index with them)."""

    def __init__(self):
        self.lowest = []

    def __call__(self, input_ids, scores, **kwargs):
        self.lowest.append(int(input_ids.min()))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("with_streamer", [True, False], ids=["streamer", "no-streamer"])
def test_a_bad_row_raises_before_its_id_reaches_user_code(setup, monkeypatch, with_streamer):
    model, enc = setup
    monkeypatch.setattr(hf_mod, "debias_sample", gpu_like_sample)
    prompt_length = enc["input_ids"].shape[1]
    streamer, seen = Streamed(), SeenIds()
    with pytest.raises(ValueError, match=f"row {BAD_ROW} of `logits`.*NaN"):
        tsdi_kernels.generate(model, None, **enc, do_sample=True, max_new_tokens=6, seed=5,
                              logits_processor=LogitsProcessorList([NanAtStep(prompt_length)]),
                              stopping_criteria=StoppingCriteriaList([seen]),
                              streamer=streamer if with_streamer else None)
    answer_chunks = streamer.chunks[1:]  # the first chunk is the prompt
    if with_streamer:
        assert len(answer_chunks) == BAD_STEP  # steps 0 and 1; the bad step's ids never reached the streamer
        assert seen.lowest and len(seen.lowest) == BAD_STEP
    else:
        assert len(seen.lowest) <= BAD_STEP + 1  # the bad step may reach the criteria, clamped (no negative id)
    assert all((chunk >= 0).all() for chunk in answer_chunks)
    assert all(lowest >= 0 for lowest in seen.lowest), seen.lowest


def test_good_rows_stream_as_before(setup, monkeypatch):
    """Without a bad row the GPU-like op changes nothing: the streamer gets every answer token."""
    model, enc = setup
    monkeypatch.setattr(hf_mod, "debias_sample", gpu_like_sample)
    streamer = Streamed()
    out = tsdi_kernels.generate(model, None, **enc, do_sample=True, max_new_tokens=4, seed=5, streamer=streamer)
    prompt_length = enc["input_ids"].shape[1]
    assert torch.equal(torch.stack(streamer.chunks[1:], dim=1), out[:, prompt_length:])
