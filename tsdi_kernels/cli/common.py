"""What the `tsdi` subcommands share: the one-line usage error, the parser that raises it, model options, and the
checks and loaders of devices, model folders, tokenizers and files (each checks before anything is loaded)."""
from __future__ import annotations

import argparse
import os
from typing import Optional

from .argtypes import SUPPORTED_DEVICES, device_name, existing_file

PROG = "tsdi"


class UsageError(Exception):
    """A mistake of the user's: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_model_options(p, *, dtype_default: str = "float32") -> None:
    p.add_argument("--device", type=device_name, default=None, help="torch device for the models: cpu, cuda or "
                   "cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=dtype_default, choices=["float32", "bfloat16", "float16"],
                   help=f"weights dtype (default: {dtype_default})")


def device(name: Optional[str]):
    """The torch device for --device (its syntax was checked by argparse; here: whether it exists)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: not a torch device: {name!r}") from None
    if dev.type not in SUPPORTED_DEVICES:
        raise UsageError(f"--device: {name!r} is not supported: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {name!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {name!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    return dev


def is_local_path(path: str) -> bool:
    # a Hugging Face id is "name" or "org/name"; anything else that is not a folder is a missing folder
    return os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1


def check_model_path(flag: str, path: str, *, model: bool = True) -> None:
    """ModelFolderError unless `path` is a Hugging Face id or a folder that can hold a model (config.json) or, with
    model=False, a tokenizer. Cheap: run before anything is loaded."""
    from ..pipeline.files import check_model_folder

    if is_local_path(path):
        check_model_folder(path, flag, model=model)


def load_model(flag: str, path: str, dev, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    check_model_path(flag, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as exc:  # noqa: BLE001  (missing folder, bad config, no network: one line for the user)
        raise UsageError(f"{flag}: cannot load a causal LM from {path!r}: {one_line(exc)}") from None
    return model.to(dev).eval()


def load_tokenizer(flag: str, path: str):
    from transformers import AutoTokenizer

    check_model_path(flag, path, model=False)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{flag}: cannot load a tokenizer from {path!r}: {one_line(exc)}") from None
    return tok


def one_line(exc: BaseException) -> str:
    """The whole message of `exc` on one line (a multi-line message is joined, never cut)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_output(flag: str, path: str) -> None:
    """UsageError unless a file can be written at `path` (its folder exists, it is not a folder)."""
    from ..pipeline.files import check_writable_path

    try:
        check_writable_path(path, flag)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def check_input_file(flag: str, path: str) -> None:
    """UsageError unless `path` is an existing regular file (no torch: runs before anything is imported)."""
    try:
        existing_file(path)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{flag}: {exc}") from None
