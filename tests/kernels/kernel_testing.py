"""What the kernel tests share, written once: the backends (Kernel, OpBackend: tests/conftest.py makes them
fixtures), sampling batches (logits with ties and -inf, bias, row parameters, mixed batches, the status-code rows),
float64 NumPy statistics, and the assertions several tests make.

(A module rather than conftest.py: test parameters and factories are plain values and functions, and a conftest.py
is not importable by name. pytest puts this folder on sys.path for the test modules in it.)"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
from typing import Optional

import numpy as np
import torch

from tsdi_kernels.kernels import library, status
from tsdi_kernels.kernels.accumulate import reference as accumulate_reference
from tsdi_kernels.kernels.sampling import reference as sampling_reference

CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def single_thread():
    """One intra-op thread for the pure-PyTorch reference (its values do not depend on the thread count; what the
    tests check of thread counts they check explicitly). On a loaded 2-core machine, two threads handing off many
    small int64 ops (the reference's Philox noise) run up to 10x slower than one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- backends -------------------------------------------------------------------------------------------------------


class Kernel:
    """One implementation of the three ops, called directly (no dispatcher, no validation: a bad row comes back as
    its status code). Takes and returns CPU tensors on every machine, moving them to its device and back.
        reference  the pure-PyTorch oracle (run on one thread)
        cpp        tsdi_kernels._C, when built
        triton     the Triton launchers: compiled on CUDA, else the interpreter on CPU tensors (`interpreted`:
                   ~1 ms per program, tile and op, so tests keep its cases at V <= 4096 and few rows)"""

    def __init__(self, name: str):
        self.name = name
        self.device = "cuda" if name == "triton" and CUDA else "cpu"
        self.interpreted = name == "triton" and not CUDA
        self._threads = single_thread if name == "reference" else contextlib.nullcontext
        if name == "reference":
            self._sample, self._probs = sampling_reference.debias_sample, sampling_reference.debias_probs
            self._update = accumulate_reference.logit_mean_update
        elif name == "cpp":
            ext = library.EXTENSION
            self._sample, self._probs, self._update = ext.debias_sample, ext.debias_probs, ext.logit_mean_update
        elif name == "triton":  # imported on first use: after tests/conftest.py has set TRITON_INTERPRET
            from tsdi_kernels.kernels.accumulate import triton_impl as accumulate
            from tsdi_kernels.kernels.sampling import triton_impl as sampling

            self._sample, self._probs, self._update = sampling.debias_sample, None, accumulate.logit_mean_update
        else:
            raise ValueError(name)

    def __repr__(self):
        return f"Kernel({self.name}, {self.device}{', interpreted' if self.interpreted else ''})"

    def launch(self, **cfg) -> dict:
        """A launch configuration (block / keep / splits ...) for the Triton launchers; the others take none."""
        return cfg if self.name == "triton" else {}

    def max_mismatches(self, rows: int) -> int:
        """Rows whose token may differ from the reference's: none for the C++ kernels; for Triton, rows where two
        candidates are within float rounding of each other (documented: <= 1%)."""
        return rows // 100 if self.name == "triton" else 0

    def _to(self, t):
        return t.to(self.device) if isinstance(t, torch.Tensor) else t

    def sample(self, batch: "Batch", **cfg) -> torch.Tensor:
        """int64 [B] tokens of a Batch; negative = the status code of a bad row."""
        with self._threads():
            out = self._sample(*(self._to(a) for a in batch.sample_args()), **cfg)
        if self.name != "cpp":
            return out.cpu()
        tokens, first_bad = out  # the C++ binding also returns the first bad row (-1: none), for the op layer
        bad = (tokens < 0).nonzero()
        assert first_bad == (int(bad[0, 0]) if len(bad) else -1), (first_bad, tokens)
        return tokens

    def probs(self, batch: "Batch"):
        """(float32 [B, V] probabilities, int64 [B] status codes)."""
        with self._threads():
            probs, codes = self._probs(*(self._to(a) for a in batch.probs_args()))
        return probs.cpu(), codes.cpu()

    def update(self, state, aligned, reference, mask, normalize=True, **cfg) -> list:
        """Update state = [mean, m2, count] in place; returns `where` [b, t] of the first counted non-finite row."""
        dev = [self._to(t) for t in state]
        with self._threads():
            where = self._update(*dev, self._to(aligned), self._to(reference), self._to(mask), normalize, **cfg)
        for t, d in zip(state, dev):
            if d is not t:
                t.copy_(d)
        return where.tolist()


def kernel_names() -> list:
    return ["reference"] + (["cpp"] if library.HAS_EXTENSION else []) + (["triton"] if HAS_TRITON else [])


@dataclasses.dataclass(frozen=True)
class OpBackend:
    """torch.ops.tsdi served by `backend` on `device`: a test moves its inputs with `to` and calls the op."""

    name: str
    device: str
    backend: str

    def to(self, *tensors):
        moved = [t.to(self.device) if isinstance(t, torch.Tensor) else t for t in tensors]
        return moved[0] if len(moved) == 1 else moved


def op_backends() -> list:
    """reference, cpp (CPU tensors); cuda-reference, cuda (CUDA tensors, the reference / the Triton kernels)."""
    out = [OpBackend("reference", "cpu", "reference")]
    if library.HAS_EXTENSION:
        out.append(OpBackend("cpp", "cpu", "cpp"))
    if CUDA:
        out.append(OpBackend("cuda-reference", "cuda", "reference"))
        if HAS_TRITON:
            out.append(OpBackend("cuda", "cuda", "triton"))
    return out


REFERENCE = Kernel("reference")  # the oracle of the assertions below


# --- sampling inputs ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """The arguments of debias_sample / debias_probs, row by row (bias shared), with optional row names."""

    logits: torch.Tensor
    bias: Optional[torch.Tensor]
    positions: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    seed: torch.Tensor
    strength: float = 1.0
    names: tuple = ()
    min_p: Optional[torch.Tensor] = None  # [B] float32, or None: min-p off (the ops' default)

    ROW_FIELDS = ("logits", "positions", "temperature", "top_k", "top_p", "seed")  # and min_p when set

    @property
    def rows(self) -> int:
        return self.logits.shape[0]

    def sample_args(self) -> tuple:
        # min_p last, and only when set: the ops' optional last argument
        return (self.logits, self.bias, self.positions, self.temperature, self.top_k, self.top_p, self.seed,
                self.strength) + (() if self.min_p is None else (self.min_p,))

    def probs_args(self) -> tuple:
        return (self.logits, self.bias, self.positions, self.temperature, self.top_k, self.top_p,
                self.strength) + (() if self.min_p is None else (self.min_p,))

    def take(self, index) -> "Batch":
        """The rows `index` (a slice or an index tensor), as a batch of their own."""
        rows = torch.arange(self.rows)[index].tolist()
        names = [self.names[i] for i in ([rows] if isinstance(rows, int) else rows)] if self.names else ()
        min_p = None if self.min_p is None else self.min_p[index]
        return dataclasses.replace(self, names=tuple(names), min_p=min_p,
                                   **{f: getattr(self, f)[index] for f in self.ROW_FIELDS})

    def replace(self, **kw) -> "Batch":
        return dataclasses.replace(self, **kw)

    def to(self, device) -> "Batch":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


def make_logits(batch, vocab, dtype=torch.float32, *, seed=0, scale=3.0, ties=None, neg_inf=None, strided=False):
    """float [B, V] randn * scale logits.
    ties:    "top"    exact ties at the top of each row (where top-k and top-p cut) and in the bulk;
             "coarse" every other row rounded to multiples of 0.5 (many ties, also at the boundaries)
    neg_inf: "band"   tokens 40..59 masked with -inf; "random": 30% of the tokens
    strided: the rows of a [B, 3, V] tensor (row stride 3 V, unit stride on V)"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vocab, generator=g) * scale
    if ties == "top":
        x[:, 10:14] = x.max(dim=1, keepdim=True).values
        x[:, 20:23] = x[:, 30:31]
    elif ties == "coarse":
        x[::2] = torch.round(x[::2] * 2) / 2
    if neg_inf == "band":
        x[:, 40:60] = float("-inf")
    elif neg_inf == "random":
        x[torch.rand(batch, vocab, generator=g) < 0.3] = float("-inf")
    x = x.to(dtype)
    if strided:
        big = torch.full((batch, 3, vocab), float("nan"), dtype=dtype)
        big[:, 1] = x
        x = big[:, 1]
        assert x.stride() == (3 * vocab, 1)
    return x


def make_bias(rows, vocab, *, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


# One row per case: (temperature, top_k, top_p, position). Mixes greedy, top-k only, top-p only, both, neither,
# positions past L (bias must not apply) and k larger than V.
ROW_CASES = [
    (0.0, 0, 1.0, 0),  # greedy
    (1.0, 0, 1.0, 1),  # neither filter
    (0.7, 50, 1.0, 2),  # top-k only
    (0.7, 0, 0.9, 3),  # top-p only
    (0.7, 50, 0.9, 0),  # both
    (1.3, 5, 0.5, 7),  # both, position past L
    (0.5, 0, 0.3, 9),  # top-p only, position past L
    (1.0, 100000, 1.0, 1),  # k > V: keeps everything
]
L_BIAS = 4


def case_batch(logits, bias, cases=ROW_CASES, *, seed=None, strength=1.0) -> Batch:
    """A batch of one row per (temperature, top_k, top_p, position) case; seeds 0, 1, ... unless given."""
    t, k, p, pos = zip(*cases)
    seed = torch.arange(len(cases), dtype=torch.int64) if seed is None else seed
    return Batch(logits, bias, torch.tensor(pos, dtype=torch.int64), torch.tensor(t, dtype=torch.float32),
                 torch.tensor(k, dtype=torch.int64), torch.tensor(p, dtype=torch.float32), seed, strength)


# (temperature, top_k, top_p) of the rows of a cycled batch
ROW_KINDS = [
    (0.0, 0, 1.0),  # greedy
    (0.8, 20, 1.0),  # top-k only
    (1.0, 0, 0.8),  # top-p only
    (0.7, 50, 0.9),  # both
    (1.3, 0, 1.0),  # neither
    (0.5, 3, 0.5),  # tiny top-k and top-p
    (1.0, 10**9, 0.95),  # k > V (top-k disabled by clamping)
    (0.0, 5, 0.3),  # greedy ignores the filters
]


def kinds_batch(batch, vocab, dtype=torch.float32, *, bias_rows=4, strength=1.0, **logits_kw) -> Batch:
    """ROW_KINDS cycled over `batch` rows, positions 0..6 cycled (some past L), random 63-bit seeds (both signs)."""
    logits = make_logits(batch, vocab, dtype, **logits_kw)
    bias = None if bias_rows is None else make_bias(bias_rows, vocab)
    kinds = [ROW_KINDS[i % len(ROW_KINDS)] for i in range(batch)]
    g = torch.Generator().manual_seed(0)
    return Batch(logits, bias, torch.arange(batch, dtype=torch.int64) % 7,
                 torch.tensor([k[0] for k in kinds], dtype=torch.float32),
                 torch.tensor([k[1] for k in kinds], dtype=torch.int64),
                 torch.tensor([k[2] for k in kinds], dtype=torch.float32),
                 torch.randint(-(2**62), 2**62, (batch,), generator=g, dtype=torch.int64), strength)


# Cases of kinds_batch: dtypes, ties, -inf, strided rows, bias / strength, V splits (C++: rows split over V
# chunks), tiny V. Sizes for compiled kernels (too large for the Triton interpreter).
KIND_CASES = {
    "B8-V4096-fp32": dict(batch=8, vocab=4096, dtype="fp32"),
    "B16-V4099-bf16": dict(batch=16, vocab=4099, dtype="bf16"),  # V not a multiple of the vector width
    "B16-V1001-fp16": dict(batch=16, vocab=1001, dtype="fp16"),
    "B16-V4096-fp32-ties": dict(batch=16, vocab=4096, dtype="fp32", ties="coarse"),
    "B16-V4096-bf16-ties": dict(batch=16, vocab=4096, dtype="bf16", ties="coarse", scale=1.0),
    "B16-V3000-fp32-neginf": dict(batch=16, vocab=3000, dtype="fp32", neg_inf="random"),
    "B8-V2048-fp32-strided": dict(batch=8, vocab=2048, dtype="fp32", strided=True),
    "B8-V2048-bf16-strided": dict(batch=8, vocab=2048, dtype="bf16", strided=True),
    "B8-V4096-fp32-nobias": dict(batch=8, vocab=4096, dtype="fp32", bias_rows=None),
    "B8-V4096-fp32-strength0": dict(batch=8, vocab=4096, dtype="fp32", strength=0.0),
    "B8-V4096-fp32-strength0.5": dict(batch=8, vocab=4096, dtype="fp32", strength=0.5),
    "B3-V70000-fp32-vsplit": dict(batch=3, vocab=70000, dtype="fp32"),  # 5 vocabulary chunks per row
    "B8-V40000-bf16-vsplit": dict(batch=8, vocab=40000, dtype="bf16", scale=6.0),
    "B8-V8-fp32-tinyV": dict(batch=8, vocab=8, dtype="fp32"),
    "B8-V1-fp32-oneV": dict(batch=8, vocab=1, dtype="fp32"),
}


def kind_case(name) -> Batch:
    case = dict(KIND_CASES[name])
    return kinds_batch(case.pop("batch"), case.pop("vocab"), DTYPES[case.pop("dtype")], **case)


# Mixed batches named by row type, for the paths of the Triton sampler: buffers cut, splits merged, fallback.
MIXED_ROW_TYPES = ("greedy", "greedy-ties", "topk", "topp", "topk-topp", "plain", "ties-topk-topp", "masked",
                   "flat-topp", "flat-topk", "k>=V", "cut-topp", "cut-topk")


def mixed_batch(vocab, dtype=torch.float32, *, seeds_per_row=1, gen_seed=1, bias_rows=4) -> Batch:
    """Every row type of MIXED_ROW_TYPES, `seeds_per_row` times (negative seeds too), bias * 0.5, strength 0.8."""
    gen = torch.Generator().manual_seed(gen_seed)
    base = torch.randn(vocab, generator=gen) * 2.5
    ties = (torch.randn(vocab, generator=gen) * 2).round()  # many exactly equal values
    masked = base.clone()
    masked[torch.randperm(vocab, generator=gen)[: vocab // 3]] = float("-inf")
    flat = torch.randn(vocab, generator=gen) * 0.05  # top-p needs most of the vocabulary: fallback path
    wide = torch.randn(vocab, generator=gen)  # every token is "near" (buffers are cut), but a few dominate
    wide[torch.randperm(vocab, generator=gen)[:30]] += 9.0
    rows = [  # (logits row, temperature, top_k, top_p, position)
        (base, 0.0, 0, 1.0, 0),
        (ties, 0.0, 40, 0.5, 1),
        (base, 0.8, 20, 1.0, 2),
        (base, 0.7, 0, 0.9, 3),
        (base, 1.3, 100, 0.8, 1),
        (base, 1.0, 0, 1.0, 0),
        (ties, 1.0, 7, 0.6, 2),
        (masked, 0.9, 0, 0.95, 9),  # position past L: no bias
        (flat, 1.0, 0, 0.7, 5),
        (flat, 1.0, 300, 1.0, 0),
        (base, 1.0, vocab + 5, 0.9, 2),
        (wide, 1.0, 0, 0.8, 1),
        (wide, 1.0, 25, 1.0, 1),
    ]
    names, cols = [], [[] for _ in range(6)]
    for i, (name, (row, t, k, p, pos)) in enumerate(zip(MIXED_ROW_TYPES, rows)):
        for j in range(seeds_per_row):
            names.append(name)
            for col, value in zip(cols, (row, t, k, p, pos, 1000 * i + 7919 * j - 3)):
                col.append(value)
    bias = torch.randn(bias_rows, vocab, generator=gen) * 0.5
    logits, temp, top_k, top_p, pos, seed = cols
    return Batch(torch.stack(logits).to(dtype), bias, torch.tensor(pos), torch.tensor(temp), torch.tensor(top_k),
                 torch.tensor(top_p), torch.tensor(seed), 0.8, tuple(names))


def status_batch() -> Batch:
    """Rows that exercise the row status codes (status.py), on strided logits (row stride V + 37), and the codes
    they must get (0: a token). Parameters are checked first (position, temperature, top-k, top-p), then NaN, then
    no finite value / +inf."""
    gen = torch.Generator().manual_seed(4)
    vocab = 500
    rows = [  # (what, temperature, top_k, top_p, position, code)
        ("NaN", 1.0, 0, 0.9, 1, status.ERR_NAN),
        ("all -inf", 1.0, 5, 1.0, 1, status.ERR_NO_FINITE),
        ("+inf", 0.0, 0, 1.0, 1, status.ERR_NO_FINITE),
        ("+inf and NaN: NaN wins", 0.7, 3, 0.5, 1, status.ERR_NAN),
        ("+inf bias entry: -inf after debiasing, legal", 0.8, 20, 1.0, 0, 0),
        ("one finite value: always that token", 0.5, 2, 0.3, 1, 0),
        ("ordinary", 1.3, 0, 1.0, 1, 0),
        ("negative position", 1.0, 0, 1.0, -1, status.ERR_POSITION),
        ("negative temperature", -0.5, 0, 1.0, 0, status.ERR_TEMPERATURE),
        ("NaN temperature", float("nan"), 0, 1.0, 0, status.ERR_TEMPERATURE),
        ("negative top_k", 1.0, -1, 1.0, 0, status.ERR_TOP_K),
        ("top_p 0", 1.0, 0, 0.0, 0, status.ERR_TOP_P),
        ("top_p > 1", 1.0, 0, 1.5, 0, status.ERR_TOP_P),
        ("NaN top_p and NaN logits: parameters first", 1.0, 0, float("nan"), 0, status.ERR_TOP_P),
        ("negative position and temperature: position first", -1.0, -3, 0.5, -2, status.ERR_POSITION),
    ]
    big = torch.randn(len(rows), vocab + 37, generator=gen)
    logits = big[:, :vocab]
    logits[0, 17] = float("nan")
    logits[1] = float("-inf")
    logits[2, 3] = float("inf")
    logits[3, 3] = float("inf")
    logits[3, 9] = float("nan")
    logits[5, :] = float("-inf")
    logits[5, 123] = 2.0
    logits[13, 7] = float("nan")
    bias = torch.zeros(2, vocab)
    bias[0, 5] = float("inf")
    what, t, k, p, pos, codes = zip(*rows)
    batch = Batch(logits, bias, torch.tensor(pos), torch.tensor(t), torch.tensor(k), torch.tensor(p),
                  torch.arange(len(rows)), 1.0, what)
    return batch, list(codes)


def top_k_beyond_finite_batch() -> Batch:
    """10 finite tokens per row and top_k of 11 or 100: top-k keeps every finite token, never a -inf one."""
    logits = torch.full((4, 3000), float("-inf"))
    logits[:, ::300] = torch.randn(4, 10)
    return Batch(logits, None, torch.zeros(4, dtype=torch.int64), torch.tensor([1.0, 0.7, 1.0, 0.0]),
                 torch.tensor([100, 11, 100, 100]), torch.tensor([1.0, 0.9, 0.5, 1.0]), torch.arange(4))


def flat_batch(vocab, top_p) -> Batch:
    """Almost uniform rows: the candidates' mass cannot reach top_p, so the exact (bounded second) pass runs."""
    batch = 4
    return Batch(make_logits(batch, vocab, scale=0.01), None, torch.zeros(batch, dtype=torch.int64),
                 torch.ones(batch), torch.tensor([0, 0, 5000, 0]), torch.full((batch,), top_p),
                 torch.arange(batch, dtype=torch.int64) * 7919)


# Every case a compiled kernel is compared with the reference on (name -> factory): KIND_CASES, flat rows (the
# exact second pass) and top-k beyond the finite tokens. Sizes for compiled kernels, not the interpreter.
REFERENCE_CASES = {name: functools.partial(kind_case, name) for name in KIND_CASES}
REFERENCE_CASES.update({f"flat-V{v}-topp{p}": functools.partial(flat_batch, v, p)
                        for v in (5000, 40000) for p in (0.99, 0.9, 0.5)})
REFERENCE_CASES["topk-beyond-finite"] = top_k_beyond_finite_batch


def random_rows_batch(seed, batch=256, vocab=2000) -> Batch:
    """Random rows of every kind (greedy, top-k, top-p, both, scales 0..8), for agreement rates."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * torch.rand(batch, 1, generator=g) * 8
    temperature = torch.rand(batch, generator=g) * 1.5
    temperature[::5] = 0
    top_k = torch.randint(0, 200, (batch,), generator=g)
    top_k[::3] = 0
    top_p = torch.rand(batch, generator=g) * 0.99 + 0.01
    top_p[::4] = 1.0
    seeds = torch.randint(0, 2**62, (batch,), generator=g)
    positions = torch.randint(0, 10, (batch,), generator=g)
    bias = torch.randn(5, vocab, generator=g)
    return Batch(logits, bias, positions, temperature, top_k, top_p, seeds, 0.8)


# --- sampling assertions ------------------------------------------------------------------------------------------


def assert_tokens_match_reference(kernel, batch: Batch, **cfg) -> torch.Tensor:
    """The kernel's tokens are the reference's (up to kernel.max_mismatches rows, which must still lie in the kept
    set), status codes included."""
    got = kernel.sample(batch, **cfg)
    want = REFERENCE.sample(batch)
    names = batch.names or tuple(range(batch.rows))
    mismatch = (got != want).nonzero().flatten().tolist()
    assert len(mismatch) <= kernel.max_mismatches(batch.rows), (
        f"{kernel.name} rows {[names[i] for i in mismatch]}: {got[mismatch].tolist()} vs reference "
        f"{want[mismatch].tolist()}")
    assert torch.equal(got[want < 0], want[want < 0]), "status codes differ"
    if mismatch:  # rows equal to the reference's token are in its kept set; the others must be too
        probs, _ = REFERENCE.probs(batch.take(torch.tensor(mismatch)))
        outside = probs.gather(1, got[mismatch][:, None])[:, 0] == 0
        assert not outside.any(), [names[i] for i, out in zip(mismatch, outside) if out]
    return got


def top_p_borderline_rows(batch: Batch, tol=1e-6) -> torch.Tensor:
    """Rows where some token's mass ranked above it is within `tol` of top_p: there the keep decision depends on
    the rounding of the softmax sum (torch.softmax's summation order and exp versus ours), so the kept sets may
    differ by that token. Computed with the reference's own numbers."""
    logits, bias, positions, temperature, top_k, top_p, strength = batch.probs_args()[:7]
    with single_thread():
        scaled, keep, greedy, codes, _ = sampling_reference._filtered(logits, bias, positions, temperature, top_k,
                                                                      torch.ones_like(top_p), strength)
    asc_vals, _ = torch.sort(scaled.masked_fill(~keep, float("-inf")), dim=1, stable=True)
    probs = torch.softmax(asc_vals.flip(1), dim=1)
    mass_above = torch.cumsum(probs, dim=1) - probs
    near = ((mass_above - top_p[:, None]).abs() < tol).any(dim=1)
    return near & (top_p < 1) & ~greedy & (codes == 0)


def assert_probs_match_reference(kernel, batch: Batch) -> None:
    got, codes = kernel.probs(batch)
    want, want_codes = REFERENCE.probs(batch)
    assert torch.equal(codes, want_codes)
    exact = ~top_p_borderline_rows(batch)
    # rtol: torch.softmax itself is off by up to ~4e-6 relative on peaked fp32 rows (measured against float64:
    # p = 0.7425205 exactly, torch 0.7425233, ours 0.7425209), so large probabilities get a relative tolerance.
    torch.testing.assert_close(got[exact], want[exact], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(got.shape[0]), atol=1e-5, rtol=0)


# --- running statistics -------------------------------------------------------------------------------------------


def zero_state(length, vocab) -> list:
    return [torch.zeros(length, vocab), torch.zeros(length, vocab), torch.zeros(length, dtype=torch.int64)]


def random_state(length, vocab, gen) -> list:
    """A non-empty running state [mean, m2, count] (counts 0..3)."""
    return [torch.randn(length, vocab, generator=gen), torch.rand(length, vocab, generator=gen) * 3,
            torch.randint(0, 4, (length,), generator=gen)]


def float64_stats(aligned, reference, mask, normalize):
    """NumPy float64 (mean [L, V], M2 [L, V], count [L]) over the counted rows of d = aligned - reference, with
    log_softmax of each when `normalize`: what any sequence of logit_mean_update calls must end with."""

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    d = aligned.double().numpy()
    if normalize:
        d = log_softmax(d)
    if reference is not None:
        r = reference.double().numpy()
        d = d - (log_softmax(r) if normalize else r)
    counted = np.ones(d.shape[:2], bool) if mask is None else mask.numpy()
    length, vocab = d.shape[1:]
    mean, m2, count = np.zeros((length, vocab)), np.zeros((length, vocab)), np.zeros(length, np.int64)
    for t in range(length):
        rows = d[counted[:, t], t]
        count[t] = len(rows)
        if len(rows):
            mean[t] = rows.mean(0)
            m2[t] = ((rows - mean[t]) ** 2).sum(0)
    return mean, m2, count


def assert_stats_close(state, want, *, mean_tol, m2_tol) -> None:
    """state [mean, m2, count] against float64 (mean, m2, count); tolerances are (atol, rtol) pairs."""
    mean, m2, count = (t.detach().cpu() for t in state)
    np.testing.assert_array_equal(count.numpy(), want[2])
    np.testing.assert_allclose(mean.numpy(), want[0], atol=mean_tol[0], rtol=mean_tol[1])
    np.testing.assert_allclose(m2.numpy(), want[1], atol=m2_tol[0], rtol=m2_tol[1])


def assert_update_deterministic(update, state, *inputs) -> None:
    """The same update from the same state twice gives bitwise the same statistics. update(state, *inputs)."""
    runs = []
    for _ in range(2):
        s = [t.clone() for t in state]
        update(s, *inputs)
        runs.append(s)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def assert_untouched_on_error(update, state, *inputs):
    """An update that must fail leaves the statistics bit-identical; returns what update(state, *inputs) returned
    (or raised: the exception object)."""
    before = [t.clone() for t in state]
    try:
        out = update(state, *inputs)
    except (ValueError, RuntimeError) as exc:
        out = exc
    for old, new in zip(before, state):
        assert torch.equal(old, new), "the statistics changed on a rejected update"
    return out
