"""Write the embedded model pair as Hugging Face model folders, loadable by vLLM and `from_pretrained`.

The aligned model exists only in memory otherwise (the reference + the shipped LoRA merged at load time):

    python -m tsdi_kernels.demo.export --out out/models
        out/models/aligned/     SmolLM2-135M-Instruct + the safety LoRA, merged (safetensors, config, tokenizer,
                                chat template, generation config)
        out/models/reference/   SmolLM2-135M-Instruct as the demo loads it

    vllm serve out/models/aligned --dtype float32 ...      AutoModelForCausalLM.from_pretrained("out/models/aligned")

Each folder is written to a temporary folder beside it and renamed into place, so a reader never sees half a model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..pipeline import files
from . import models

PathLike = Union[str, os.PathLike]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MARKER = "tsdi_export.json"


def _write_folder(model, tokenizer, dest: Path, info: dict, *, overwrite: bool) -> Path:
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists: pass overwrite=True (--force) to replace it")
    def write(tmp):
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        Path(tmp, MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    if dest.exists():
        shutil.rmtree(dest)  # overwrite=True (checked above): the new folder replaces it
    files.atomic_write_folder(dest, write)
    return dest


def export_pair(out: PathLike, *, model_dir: Optional[PathLike] = None, adapter: PathLike = models.ADAPTER_PATH,
                dtype: Union[str, torch.dtype] = "float32", overwrite: bool = False) -> dict[str, Path]:
    """Write ``out/aligned`` (reference + merged adapter) and ``out/reference``; returns {"aligned", "reference"}.

    model_dir: the reference's folder (default: the embedded SmolLM2-135M-Instruct, converted on first use).
    adapter: the LoRA file merged into the aligned model (default: the shipped safety adapter).
    dtype: the weights' dtype in the folders (and their config's `dtype`); float32 by default, as the demo runs.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    out = Path(out)
    targets = {"aligned": out / "aligned", "reference": out / "reference"}
    if not overwrite:
        for path in targets.values():
            if path.exists():
                raise FileExistsError(f"{path} exists: pass overwrite=True (--force) to replace it")
    aligned, reference, tokenizer = models.load_pair(model_dir, adapter, dtype=dtype)
    common = {"reference": source_name(model_dir), "dtype": str(dtype).replace("torch.", "")}
    _write_folder(reference, tokenizer, targets["reference"], {**common, "role": "reference"}, overwrite=overwrite)
    _write_folder(aligned, tokenizer, targets["aligned"],
                  {**common, "role": "aligned", "adapter": str(Path(adapter).name)}, overwrite=overwrite)
    return targets


def source_name(model_dir: Optional[PathLike] = None) -> str:
    """What the folders' marker records as the reference: the folder given, or the embedded model."""
    return str(model_dir) if model_dir is not None else f"embedded {models.CACHE_NAME} ({models.GGUF_NAME})"


def is_current(folder: Path, role: str, source: str, adapter: Path) -> bool:
    """Whether `folder` holds the model export_pair wrote for (role, source, adapter) in float32, after the adapter
    file last changed: then it can be reused instead of writing 0.5 GB again."""
    marker = folder / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        fresh = marker.stat().st_mtime >= adapter.stat().st_mtime
    except (OSError, ValueError):
        return False
    expected = {"role": role, "reference": source, "dtype": "float32"}
    if role == "aligned":
        expected["adapter"] = adapter.name
    return fresh and (folder / "config.json").is_file() and all(info.get(k) == v for k, v in expected.items())


def export_pair_once(out: PathLike, *, model_dir: Optional[PathLike] = None, adapter: PathLike = models.ADAPTER_PATH,
                     shown: Optional[str] = None, log=print) -> dict[str, Path]:
    """The float32 pair in ``out`` (absolute paths), written by export_pair unless a current export is there (the
    demo and `tsdi eval --engine vllm` reuse it run after run). `shown`: how `log` names the folder."""
    out, adapter = Path(out).resolve(), Path(adapter)
    shown = shown or str(out)
    targets = {"aligned": out / "aligned", "reference": out / "reference"}
    if all(is_current(path, role, source_name(model_dir), adapter) for role, path in targets.items()):
        log(f"reusing the model folders in {shown}/ (written by an earlier run)")
        return targets
    log(f"writing the aligned model (reference + safety LoRA, merged) and the reference as model folders to "
        f"{shown}/ (float32, 2 x 517 MB for SmolLM2-135M; once, about 10-30 s) ...")
    paths = export_pair(out, model_dir=model_dir, adapter=adapter, dtype="float32", overwrite=True)
    return {role: Path(path).resolve() for role, path in paths.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tsdi_kernels.demo.export",
        description="Write the embedded aligned model (reference + shipped LoRA, merged) and its reference as "
                    "Hugging Face model folders that vLLM and from_pretrained load.")
    parser.add_argument("--out", required=True, type=Path, help="folder to write aligned/ and reference/ into")
    parser.add_argument("--model", type=Path, default=None,
                        help="reference model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", type=Path, default=models.ADAPTER_PATH,
                        help="LoRA file to merge (default: the shipped safety adapter)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the written weights (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing folders")
    args = parser.parse_args(argv)
    try:
        paths = export_pair(args.out, model_dir=args.model, adapter=args.adapter, dtype=args.dtype,
                            overwrite=args.force)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"aligned:   {paths['aligned']}")
    print(f"reference: {paths['reference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
