"""The Philox4x32-10 noise every backend draws from: the pure-PyTorch generator (sampling/philox.py) and the C++
one (csrc/philox.h) produce exactly the bits of Triton's own tl.rand for the kernels' counter (token + position *
2**32), run here through the Triton interpreter (compiled on CUDA where a GPU exists)."""
import pytest
import torch

from tsdi_kernels.kernels import library
from tsdi_kernels.kernels.sampling import philox

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _rand_kernel(tok_ptr, out_ptr, seed, position, N: tl.constexpr):
    offs = tl.arange(0, N)
    tok = tl.load(tok_ptr + offs)
    offset = tok + (position.to(tl.int64) << 32)  # token + position * 2^32: the kernels' counter
    tl.store(out_ptr + offs, tl.rand(seed, offset))


_tokens = torch.cat([torch.arange(64), torch.randint(0, 2**31 - 1, (64,), generator=torch.Generator().manual_seed(0))])
CASES = [(0, 0), (12345, 3), (2**40 + 17, 2**20), (-987654321, 7), (2**62 + 5, 0)]  # (seed, position)

IMPLEMENTATIONS = {"python": philox.philox_uniform}
if library.HAS_EXTENSION:
    IMPLEMENTATIONS["cpp"] = library.EXTENSION.philox_uniform


@pytest.fixture(scope="module")
def triton_bits():
    """float32 bits of tl.rand for every case, computed once."""
    out = {}
    for seed, position in CASES:
        u = torch.empty(len(_tokens), dtype=torch.float32, device=DEVICE)
        _rand_kernel[(1,)](_tokens.to(DEVICE), u, seed, position, N=len(_tokens))
        out[seed, position] = u.cpu()
    return out


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=str)
def test_philox_matches_triton_bit_for_bit(impl, triton_bits):
    for seed, position in CASES:
        got = IMPLEMENTATIONS[impl](torch.tensor([seed]), torch.tensor([position]), _tokens)
        want = triton_bits[seed, position]
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"seed {seed} position {position}"
