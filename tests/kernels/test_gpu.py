"""GPU tests of the Triton kernels at real sizes (skipped without CUDA; benchmarks/gpu_check.py runs them). The
properties at small sizes run on CUDA too, through the `triton` kernel and the `cuda` op backend of the other files.

Tiers: (1) the same tokens as the reference for the same seeds and every token inside the reference's kept set, (2) frequencies of many draws against the exact probabilities, at V = 128256 / 151936,
B = 1 .. 256, bf16 and fp32; then CUDA-graph capture of a decode-like step replayed with new seeds and
positions, torch.compile(fullgraph=True) over both ops, CPU/GPU agreement, and the accumulator."""
import pytest
import torch

import tsdi_kernels  # noqa: F401  (registers torch.ops.tsdi)
from kernel_testing import assert_untouched_on_error, assert_update_deterministic
from tsdi_kernels.kernels.accumulate import reference as acc_reference
from tsdi_kernels.kernels.sampling import reference

pytestmark = pytest.mark.gpu
CUDA = "cuda"


def _inputs(batch, vocab, dtype, seed=0, bias_rows=16, flat_rows=0):
    """A decode-like batch: LLM-shaped logits (a few strong tokens over a wide bulk), mixed row settings."""
    gen = torch.Generator(device=CUDA).manual_seed(seed)
    logits = torch.randn(batch, vocab, device=CUDA, generator=gen) * 2.0
    strong = torch.randint(0, vocab, (batch, 40), device=CUDA, generator=gen)
    logits.scatter_add_(1, strong, torch.rand(batch, 40, device=CUDA, generator=gen) * 12.0)
    if flat_rows and batch > 3:  # row 3 samples top-p 0.9 from a flat row: the exact fallback kernel
        logits[3] = torch.randn(vocab, device=CUDA, generator=gen) * 0.05
    logits[:, -7:] = float("-inf")  # masked tokens are legal
    bias = torch.randn(bias_rows, vocab, device=CUDA, generator=gen) * 0.5
    i = torch.arange(batch, device=CUDA)
    temperature = torch.tensor([0.0, 0.7, 1.0, 0.7, 1.3, 0.9], device=CUDA)[i % 6]
    top_k = torch.tensor([0, 50, 0, 0, 20, 2000], device=CUDA)[i % 6]
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.9, 0.8, 0.95], device=CUDA)[i % 6]
    positions = (i * 5) % (bias_rows + 8)  # some past L: no bias
    seeds = i * 7919 + 13
    return dict(logits=logits.to(dtype), bias=bias, positions=positions, temperature=temperature, top_k=top_k,
                top_p=top_p, seed=seeds)


def _sample(args, strength=0.8):
    return torch.ops.tsdi.debias_sample(args["logits"], args["bias"], args["positions"], args["temperature"],
                                        args["top_k"], args["top_p"], args["seed"], strength)


def _probs(args, strength=0.8):
    return reference.debias_probs(args["logits"], args["bias"], args["positions"], args["temperature"],
                                  args["top_k"], args["top_p"], strength)[0]


def _ref_tokens(args, strength=0.8):
    return reference.debias_sample(args["logits"], args["bias"], args["positions"], args["temperature"],
                                   args["top_k"], args["top_p"], args["seed"], strength)


@pytest.mark.parametrize("vocab", [128256, 151936])
@pytest.mark.parametrize("batch", [1, 8, 64, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_tokens_and_support_at_real_sizes(vocab, batch, dtype):
    args = _inputs(batch, vocab, dtype, seed=batch, flat_rows=1 if batch >= 8 else 0)
    assert tsdi_kernels.backends()["debias_sample"]["cuda"] == "triton"
    got = _sample(args)
    assert (got >= 0).all()
    probs = _probs(args)
    assert (probs.gather(1, got[:, None]) > 0).all(), "a token outside the kept set"
    # identical up to float rounding (two candidates within ~1e-6 of each other): rare, so <= 1% or 1 row
    mismatches = int((got != _ref_tokens(args)).sum())
    assert mismatches <= max(1, batch // 100), mismatches


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_frequencies_match_probabilities(dtype):
    """8192 draws of one row (different seeds) against the exact distribution: chi-square over the tokens with
    expected count >= 5 (the rest pooled), fixed seeds, p-value > 1e-4."""
    vocab, draws = 128256, 8192
    one = _inputs(1, vocab, dtype, seed=3)
    one["temperature"][:] = 1.0
    one["top_k"][:] = 200
    one["top_p"][:] = 0.95
    args = {k: (v.expand(draws, *v.shape[1:]).contiguous() if k != "bias" else v) for k, v in one.items()}
    args["seed"] = torch.arange(draws, device=CUDA) * 104729 + 1
    tokens = _sample(args)
    probs = _probs(one)[0].double()
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = probs * draws
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    chi2 = (((obs - exp) ** 2)[keep] / exp[keep]).sum().item()
    dof = int(keep.sum()) - 1
    from math import sqrt

    z = (chi2 - dof) / sqrt(2 * dof)  # normal approximation of chi-square
    assert z < 4.0, (chi2, dof)
    assert counts[probs == 0].sum() == 0


def test_cpu_gpu_token_agreement():
    args = _inputs(64, 32000, torch.bfloat16, seed=5)
    gpu = _sample(args).cpu()
    cpu = _sample({k: v.cpu() for k, v in args.items()})
    assert (gpu == cpu).float().mean().item() >= 0.99


def test_cuda_graph_decode_step_replays_with_new_seeds_and_positions():
    """A decode-like step (projection to logits, then the fused sampler and the accumulator) captured once and
    replayed with new seeds and positions copied into the static inputs: same tokens as eager calls."""
    batch, hidden, vocab, length = 8, 256, 128256, 4
    gen = torch.Generator(device=CUDA).manual_seed(0)
    weight = torch.randn(hidden, vocab, device=CUDA, generator=gen, dtype=torch.bfloat16) * 0.2
    h = torch.randn(batch, hidden, device=CUDA, generator=gen, dtype=torch.bfloat16)
    base = _inputs(batch, vocab, torch.bfloat16)
    static = {k: v.clone() for k, v in base.items() if k != "logits"}
    aligned = torch.randn(2, length, vocab, device=CUDA, generator=gen, dtype=torch.bfloat16)
    ref = torch.randn(2, length, vocab, device=CUDA, generator=gen, dtype=torch.bfloat16)
    mean, m2 = torch.zeros(length, vocab, device=CUDA), torch.zeros(length, vocab, device=CUDA)
    count = torch.zeros(length, dtype=torch.int64, device=CUDA)

    def step():
        logits = h @ weight
        tokens = torch.ops.tsdi.debias_sample(logits, static["bias"], static["positions"], static["temperature"],
                                              static["top_k"], static["top_p"], static["seed"], 1.0)
        torch.ops.tsdi.logit_mean_update(mean, m2, count, aligned, ref, None, True)
        return tokens

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # compile the kernels and warm the allocator before capture
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for it in range(3):
        static["seed"].copy_(base["seed"] * (it + 3) + 11)
        static["positions"].copy_((base["positions"] + it) % 20)
        mean.zero_(), m2.zero_(), count.zero_()
        graph.replay()
        torch.cuda.synchronize()
        eager = torch.ops.tsdi.debias_sample(h @ weight, static["bias"], static["positions"],
                                             static["temperature"], static["top_k"], static["top_p"],
                                             static["seed"], 1.0)
        assert torch.equal(out, eager)
        assert count.tolist() == [2] * length
    m_ref, m2_ref = torch.zeros_like(mean), torch.zeros_like(m2)
    acc_reference.logit_mean_update(m_ref, m2_ref, torch.zeros_like(count), aligned, ref, None, True)
    torch.testing.assert_close(mean, m_ref, atol=1e-4, rtol=1e-4)


def test_graph_capture_does_not_cache_parameters_made_during_capture():
    """tsdi_kernels.debias_sample with scalar parameters first seen while a CUDA graph is captured: the [B]
    tensors made then are only recorded (filled at replay), so the cache must not keep them. After the capture,
    an eager call with the same scalars must draw the tokens of the same kernel called with explicit [B] tensors
    (a cached tensor from the capture would hold garbage)."""
    batch, vocab = 4, 32000
    args = _inputs(batch, vocab, torch.float32, seed=21)
    logits, bias = args["logits"], args["bias"]
    scalars = dict(positions=3, temperature=0.61803, top_k=37, top_p=0.913, seed=424242)  # no other test uses these
    warm = dict(positions=1, temperature=0.5, top_k=10, top_p=0.5, seed=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        tsdi_kernels.debias_sample(logits, bias, **warm)  # compiles the kernels before the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = tsdi_kernels.debias_sample(logits, bias, **scalars)
    graph.replay()
    eager = tsdi_kernels.debias_sample(logits, bias, **scalars)
    rows = {k: torch.full((batch,), v, device=CUDA, dtype=torch.float32 if isinstance(v, float) else torch.int64)
            for k, v in scalars.items()}
    expected = _sample(dict(rows, logits=logits, bias=bias), strength=1.0)  # the same kernel, explicit tensors
    assert (expected >= 0).all()
    assert torch.equal(eager, expected)
    assert torch.equal(captured, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_ops_on_the_second_device_while_the_first_is_current():
    """Triton launches on the current device: tensors on cuda:1 while cuda:0 is current must still work (the
    launchers switch to the tensors' device), with the same results as on cuda:0."""
    torch.cuda.set_device(0)
    args = _inputs(8, 32000, torch.bfloat16, seed=17)
    on_1 = {k: v.to("cuda:1") for k, v in args.items()}
    tokens = _sample(on_1)
    assert tokens.device == torch.device("cuda", 1) and torch.cuda.current_device() == 0
    assert torch.equal(tokens.cpu(), _sample(args).cpu())
    length, vocab = 3, 32000
    aligned = torch.randn(4, length, vocab, device=CUDA, dtype=torch.bfloat16)
    results = []
    for device in ("cuda:1", "cuda:0"):
        stats = [torch.zeros(length, vocab, device=device), torch.zeros(length, vocab, device=device),
                 torch.zeros(length, dtype=torch.int64, device=device)]
        torch.ops.tsdi.logit_mean_update(*stats, aligned.to(device), None, None, True)
        results.append([t.cpu() for t in stats])
    assert torch.cuda.current_device() == 0
    for on_1, on_0 in zip(*results):  # the accumulator is deterministic: bitwise the same on both devices
        assert torch.equal(on_1, on_0)
    assert results[0][2].tolist() == [4] * length


def test_torch_compile_fullgraph():
    batch, vocab, length = 4, 32000, 3
    args = _inputs(batch, vocab, torch.bfloat16, seed=9)
    aligned = torch.randn(batch, length, vocab, device=CUDA, dtype=torch.bfloat16)
    stats = [torch.zeros(length, vocab, device=CUDA), torch.zeros(length, vocab, device=CUDA),
             torch.zeros(length, dtype=torch.int64, device=CUDA)]

    def fn(logits, bias, positions, temperature, top_k, top_p, seed, mean, m2, count, aligned):
        scaled = logits * 1.0
        tokens = torch.ops.tsdi.debias_sample(scaled, bias, positions, temperature, top_k, top_p, seed, 0.8)
        torch.ops.tsdi.logit_mean_update(mean, m2, count, aligned, None, None, True)
        return tokens + 0

    compiled = torch.compile(fn, fullgraph=True)
    got = compiled(args["logits"], args["bias"], args["positions"], args["temperature"], args["top_k"],
                   args["top_p"], args["seed"], *stats, aligned)
    assert torch.equal(got, _sample(args))
    assert stats[2].tolist() == [batch] * length


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("vocab", [128256, 151936])
def test_accumulator_at_real_sizes(dtype, vocab):
    batch, length = 6, 4
    gen = torch.Generator(device=CUDA).manual_seed(1)
    aligned = (torch.randn(batch, length, vocab, device=CUDA, generator=gen) * 3).to(dtype)
    ref = (torch.randn(batch, length, vocab, device=CUDA, generator=gen) * 3).to(dtype)
    mask = torch.rand(batch, length, device=CUDA, generator=gen) > 0.2
    ours = [torch.randn(length, vocab, device=CUDA), torch.rand(length, vocab, device=CUDA),
            torch.randint(0, 5, (length,), device=CUDA)]
    theirs = [t.clone() for t in ours]
    torch.ops.tsdi.logit_mean_update(*ours, aligned, ref, mask, True)
    acc_reference.logit_mean_update(*theirs, aligned, ref, mask, True)
    torch.testing.assert_close(ours[0], theirs[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-3, rtol=1e-4)
    assert torch.equal(ours[2], theirs[2])
    # deterministic: bitwise the same result again; untouched (and an error) on a non-finite counted row
    again = [torch.randn(length, vocab, device=CUDA), torch.rand(length, vocab, device=CUDA),
             torch.randint(0, 5, (length,), device=CUDA)]
    update = lambda s, *inputs: torch.ops.tsdi.logit_mean_update(*s, *inputs, True)  # noqa: E731
    assert_update_deterministic(update, again, aligned, ref, mask)
    mask[3, 2] = True
    aligned[3, 2, 77] = float("nan")
    err = assert_untouched_on_error(update, again, aligned, ref, mask)
    assert isinstance(err, ValueError) and "batch row 3, position 2" in str(err), err
