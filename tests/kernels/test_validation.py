"""Bad input never crashes the process or returns garbage: a ValueError / RuntimeError naming the argument (the op
contract in docs/semantics.md), on every op backend, for debias_sample, debias_probs and logit_mean_update, and from
the Python wrappers. Bad per-row values are status codes of the kernels' pass: on CPU debias_sample raises by itself;
on CUDA it does not synchronise, and tsdi_kernels.check_tokens raises at the caller's sync point."""
import pytest
import torch

import tsdi_kernels


def _good_sampling_args(batch=3, vocab=100):
    return dict(
        logits=torch.randn(batch, vocab),
        bias=torch.randn(4, vocab),
        positions=torch.zeros(batch, dtype=torch.int64),
        temperature=torch.ones(batch),
        top_k=torch.zeros(batch, dtype=torch.int64),
        top_p=torch.ones(batch),
        seed=torch.zeros(batch, dtype=torch.int64),
    )


def _logits_with(row, col, value):
    x = torch.randn(3, 100)
    x[row, col] = value
    return x


BAD_SAMPLING_INPUTS = {
    "top_p-zero": ("top_p", torch.tensor([0.9, 0.0, 1.0]), "top_p"),
    "top_p-above-one": ("top_p", torch.tensor([1.5, 0.5, 1.0]), "top_p"),
    "top_p-nan": ("top_p", torch.tensor([float("nan"), 0.5, 1.0]), "top_p"),
    "temperature-negative": ("temperature", torch.tensor([1.0, -0.1, 1.0]), "temperature"),
    "temperature-nan": ("temperature", torch.tensor([1.0, float("nan"), 1.0]), "temperature"),
    "top_k-negative": ("top_k", torch.tensor([0, -1, 5]), "top_k"),
    "top_k-float": ("top_k", torch.tensor([0.0, 1.0, 5.0]), "top_k"),
    "positions-negative": ("positions", torch.tensor([0, -2, 0]), "positions"),
    "positions-shape": ("positions", torch.zeros(4, dtype=torch.int64), "positions"),
    "seed-dtype": ("seed", torch.zeros(3, dtype=torch.int32), "seed"),
    "bias-vocab-mismatch": ("bias", torch.randn(4, 99), "bias"),
    "bias-dtype": ("bias", torch.randn(4, 100, dtype=torch.float64), "bias"),
    "bias-1d": ("bias", torch.randn(100), "bias"),
    "logits-int": ("logits", torch.zeros(3, 100, dtype=torch.int64), "logits"),
    "logits-3d": ("logits", torch.randn(3, 1, 100), "logits"),
    "logits-nan": ("logits", _logits_with(1, 5, float("nan")), "NaN"),
    "logits-all-neginf": ("logits", _logits_with(2, slice(None), float("-inf")), "no finite value"),
    "logits-posinf": ("logits", _logits_with(0, 3, float("inf")), r"\+inf"),
}


def _sample(*args):
    return tsdi_kernels.check_tokens(torch.ops.tsdi.debias_sample(*args))


@pytest.mark.parametrize("case", list(BAD_SAMPLING_INPUTS), ids=str)
def test_bad_sampling_input_names_argument(op_backend, case):
    name, value, pattern = BAD_SAMPLING_INPUTS[case]
    args = _good_sampling_args()
    args[name] = value
    args = dict(zip(args, op_backend.to(*args.values())))
    with pytest.raises((ValueError, RuntimeError), match=pattern):
        _sample(*args.values(), 1.0)
    if name != "seed":
        del args["seed"]
        with pytest.raises((ValueError, RuntimeError), match=pattern):
            torch.ops.tsdi.debias_probs(*args.values(), 1.0)


def test_bad_strength_and_nan_bias(op_backend):
    args = op_backend.to(*_good_sampling_args().values())
    with pytest.raises(ValueError, match="strength"):
        _sample(*args, float("nan"))
    args[1][0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _sample(*args, 1.0)


def test_one_strength_limit_everywhere():
    """The op, the HF processor and generate, and the vLLM processor's request check share one strength check:
    finite, |strength| <= MAX_STRENGTH; the limit itself is accepted."""
    from tsdi_kernels.integrations import vllm
    from tsdi_kernels.integrations.hf import TSDILogitsProcessor
    from tsdi_kernels.kernels.validation import MAX_STRENGTH

    args = list(_good_sampling_args().values())
    assert _sample(*args, -MAX_STRENGTH).shape == (3,)
    bias = torch.zeros(2, 100)
    for strength in (MAX_STRENGTH * 1.01, -MAX_STRENGTH * 1.01):
        with pytest.raises(ValueError, match="`strength` must lie in"):
            _sample(*args, strength)
        with pytest.raises(ValueError, match="`strength` must lie in"):
            TSDILogitsProcessor(bias, prompt_length=3, strength=strength)
        with pytest.raises(ValueError, match="tsdi_strength must lie in"):
            vllm.validate_extra_args({vllm.STRENGTH_KEY: strength})
    assert TSDILogitsProcessor(bias, prompt_length=3, strength=MAX_STRENGTH).strength == MAX_STRENGTH


BAD_ACCUMULATOR_INPUTS = {
    "reference-shape": ("reference", lambda: torch.randn(2, 3, 11), "reference"),
    "aligned-dtype": ("aligned", lambda: torch.zeros(2, 3, 10, dtype=torch.int32), "aligned"),
    "aligned-2d": ("aligned", lambda: torch.randn(3, 10), "aligned"),
    "mask-dtype": ("mask", lambda: torch.ones(2, 3), "mask"),
    "mask-shape": ("mask", lambda: torch.ones(2, 4, dtype=torch.bool), "mask"),
    "mean-shape": ("mean", lambda: torch.zeros(3, 11), "mean"),
    "m2-dtype": ("m2", lambda: torch.zeros(3, 10, dtype=torch.float64), "m2"),
    "count-dtype": ("count", lambda: torch.zeros(3, dtype=torch.int32), "count"),
    "mean-noncontiguous": ("mean", lambda: torch.zeros(10, 3).t(), "mean"),
}


@pytest.mark.parametrize("case", list(BAD_ACCUMULATOR_INPUTS), ids=str)
def test_bad_accumulator_input_names_argument(op_backend, case):
    name, make, pattern = BAD_ACCUMULATOR_INPUTS[case]
    args = dict(
        mean=torch.zeros(3, 10),
        m2=torch.zeros(3, 10),
        count=torch.zeros(3, dtype=torch.int64),
        aligned=torch.randn(2, 3, 10),
        reference=torch.randn(2, 3, 10),
        mask=None,
    )
    args[name] = make()
    with pytest.raises((ValueError, RuntimeError), match=pattern):
        torch.ops.tsdi.logit_mean_update(*op_backend.to(*args.values()), True)


def test_api_bad_scalars():
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="top_k"):
        tsdi_kernels.debias_sample(x, top_k=2.5)
    with pytest.raises(ValueError, match="temperature"):
        tsdi_kernels.debias_sample(x, temperature=torch.ones(3))
    with pytest.raises(ValueError, match="logits"):
        tsdi_kernels.debias_sample(torch.randn(10))
    with pytest.raises(ValueError, match="`length`"):
        tsdi_kernels.BiasTable.empty(0, 10)
    # integer parameters beyond int64 name the argument instead of failing inside torch.full
    with pytest.raises(ValueError, match="`seed` must fit in int64"):
        tsdi_kernels.debias_sample(x, seed=2**64)
    with pytest.raises(ValueError, match="`positions` must fit in int64"):
        tsdi_kernels.debias_sample(x, positions=-(2**63) - 1)
    with pytest.raises(ValueError, match="`seed` must be a number or a tensor"):
        tsdi_kernels.debias_sample(x, seed=True)
