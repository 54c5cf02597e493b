"""Launch sizing shared by the Triton launchers: SM count and the split of a row's vocabulary across programs."""
import functools

import torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere, e.g. CPU tensors under TRITON_INTERPRET=1)."""
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def split_vocab(rows: int, vocab: int, block: int, n_sm: int, max_splits: int, *, interp: bool,
                splits=None) -> tuple[int, int]:
    """(splits, chunk): cut each of `rows` rows into `splits` chunks of `chunk` (a multiple of `block`) tokens.
    Splits fill ~4 programs per SM when the rows alone would leave SMs idle, with at least 4 tiles per program
    and at most `max_splits`; the interpreter runs one split (programs are serial there)."""
    if splits is None:
        splits = 1 if interp else max(1, min(cdiv(4 * n_sm, rows), cdiv(vocab, 4 * block), max_splits))
    splits = min(splits, max_splits)
    chunk = cdiv(cdiv(vocab, splits), block) * block
    return cdiv(vocab, chunk), chunk
