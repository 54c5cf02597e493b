"""Shared by the Triton launchers: the device guard, the SM count and the split of a row's vocabulary across
programs."""
import contextlib
import functools

import torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def on_device(device: torch.device):
    """The context every launch runs in: Triton launches on the CURRENT CUDA device and its current stream, so
    tensors on cuda:1 while cuda:0 is current would fail ("Pointer argument cannot be accessed from Triton").
    Switches to the tensors' device for the launches (and back); a no-op for CPU tensors (TRITON_INTERPRET=1)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere, e.g. CPU tensors under TRITON_INTERPRET=1)."""
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


# Resident CTAs per SM of the streaming kernels, from their compiled register counts (compile_check for sm_90:
# <= 128 registers x 128 threads = 16384 of the SM's 65536 registers -> 4 CTAs). A grid of at most
# n_sm * CTAS_PER_SM programs runs in ONE wave; one more program would start a second wave and double the time.
CTAS_PER_SM = 4


def split_vocab(rows: int, vocab: int, block: int, n_sm: int, max_splits: int, *, interp: bool,
                splits=None) -> tuple[int, int]:
    """(splits, chunk): cut each of `rows` rows into `splits` chunks of `chunk` (a multiple of `block`) tokens.
    As many splits as fit in one wave (rows * splits <= n_sm * CTAS_PER_SM, rounded down), with at least 4 tiles
    per program and at most `max_splits`; the interpreter runs one split (programs are serial there). Rows alone
    beyond one wave (rows > n_sm * CTAS_PER_SM) get one split each."""
    if splits is None:
        splits = 1 if interp else max(1, min((CTAS_PER_SM * n_sm) // rows, cdiv(vocab, 4 * block), max_splits))
    splits = min(splits, max_splits)
    chunk = cdiv(cdiv(vocab, splits), block) * block
    return cdiv(vocab, chunk), chunk
