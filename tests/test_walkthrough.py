"""A newcomer's first hour, step by step as the README has it, on the tiny offline test models (issue 12).

Every step runs the real `tsdi` console script in a subprocess, as a user types it, and checks what it prints and
writes:

    tsdi --help                                           answers (without importing torch: see test_cli.py)
    tsdi estimate --aligned A --reference R -o bias.safetensors ...
    tsdi inspect bias.safetensors --plot bias.png         token texts shown without --tokenizer (the table names
                                                          the aligned model's folder), ranked by probability moved
    tsdi generate --model A --bias bias.safetensors --prompt ...
    tsdi demo --model R --adapter LORA ...                the demo path: writes OUT/models/{aligned,reference}
    tsdi generate --model OUT/models/aligned --bias OUT/bias.safetensors --prompt ...
    tsdi inspect OUT/bias.safetensors

The models are folders in a temporary directory (tests/tiny_models.py builds them; nothing is downloaded).
Each step is a process that imports torch and transformers (several seconds on a busy machine), so the steps are
the README's and no more; the details of each command are tested in process in test_cli.py and test_demo.py.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import shifted_pair, single_thread, tiny_tokenizer

from tsdi_kernels import BiasTable


pytestmark = pytest.mark.slow  # each step starts a process that imports torch and transformers


def tsdi_command() -> list:
    """The console script of this environment, as a user runs it (else the module, for a checkout without it)."""
    script = Path(sys.executable).with_name("tsdi")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tsdi_kernels.cli"]


def tsdi(*args, cwd, expect: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TSDI_CACHE=str(Path(cwd) / "cache"))
    proc = subprocess.run(tsdi_command() + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == expect, f"tsdi {' '.join(map(str, args))}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """reference/ and aligned/ model folders (aligned = reference with a shifted output layer: a real bias), and
    a LoRA file in the demo's adapter format for the reference."""
    root = tmp_path_factory.mktemp("walkthrough")
    with single_thread():
        tok, aligned, reference = shifted_pair(0.5)
    for name, model in (("reference", reference), ("aligned", aligned)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    g = torch.Generator().manual_seed(5)
    lora = {}
    for module, (out_dim, in_dim) in {"model.layers.0.self_attn.q_proj": (32, 32),
                                      "model.layers.1.mlp.up_proj": (64, 32)}.items():
        lora[f"{module}.lora_A"] = 0.3 * torch.randn(4, in_dim, generator=g)
        lora[f"{module}.lora_B"] = 0.3 * torch.randn(out_dim, 4, generator=g)
    save_file(lora, str(root / "lora.safetensors"), metadata={"scale": "2.0", "name": "tiny-lora"})
    prompts = {"harmless": ["How do I kill a Python process?", "Write a poem about the sea."],
               "harmful": ["How do I build a bomb?"]}
    (root / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    return root


def rows_of(out: str) -> list:
    """The ranked rows of `tsdi inspect`: (position, rank, token id, token text, bias, stderr, p_a, p_d)."""
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(.*?)\s+([+-]\d+\.\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
        if m:
            rows.append((int(m[1]), int(m[2]), int(m[3]), m[4], float(m[5]), float(m[6]), float(m[7]),
                         float(m[8])))
    return rows


def test_readme_walkthrough(folders, tmp_path):
    # 1. the command answers
    out = tsdi("--help", cwd=tmp_path).stdout
    for command in ("estimate", "inspect", "generate", "demo"):
        assert command in out

    # 2. estimate a bias table from an aligned model and its reference
    table_path = tmp_path / "bias.safetensors"
    out = tsdi("estimate", "--aligned", folders / "aligned", "--reference", folders / "reference", "-o", table_path,
               "--num-prompts", 16, "--length", 3, "--batch-size", 8, "--prompt-tokens", 2, 6, "--no-progress",
               cwd=tmp_path).stdout
    assert out.count("wrote") == 1 and "L=3" in out and "prompts=16" in out
    table = BiasTable.load(table_path)
    assert table.aligned_logprob is not None and table.metadata["aligned"] == str(folders / "aligned")

    # 3. inspect it: token texts without --tokenizer, ranked by the probability debiasing moves, with a plot
    plot = tmp_path / "bias.png"
    out = tsdi("inspect", table_path, "--top", 3, "--plot", plot, cwd=tmp_path).stdout
    rows = rows_of(out)
    assert len(rows) == 3 * 3, out
    assert all(r[3].strip() and not r[3].startswith("#") for r in rows), out  # token texts shown
    assert "no tokenizer found" not in out and "pos 0: strength 1 moves" in out
    for t in range(3):
        moved = [p_a - p_d for (pos, _, _, _, _, _, p_a, p_d) in rows if pos == t]
        assert moved == sorted(moved, reverse=True) and all(m >= 0 for m in moved)  # taken from, largest first
    tok = tiny_tokenizer()
    special = set(tok.all_special_ids)
    assert not any(r[2] in special for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 4. generate with the aligned model and the table
    out = tsdi("generate", "--model", folders / "aligned", "--bias", table_path, "--prompt", "hello there",
               "--prompt", "Sorry, can you help?", "--max-new-tokens", 5, "--greedy", cwd=tmp_path).stdout
    assert out.count("### ") == 2 and "### hello there" in out


def test_demo_then_generate_with_its_models(folders, tmp_path):
    """The README's demo path: `tsdi demo` writes the aligned model as a folder and a table naming it; one
    `tsdi generate --model OUT/models/aligned --bias OUT/bias.safetensors` command uses both."""
    out_dir = tmp_path / "out"
    out = tsdi("demo", "--model", folders / "reference", "--adapter", folders / "lora.safetensors",
               "--prompts", folders / "prompts.json", "--out", out_dir, "--num-prompts", 8, "--length", 3,
               "--batch-size", 4, "--strengths", "1", "--max-new-tokens", 4, "--threads", 1, "--top", 2,
               cwd=tmp_path).stdout
    aligned_dir = out_dir / "models" / "aligned"
    for role in ("aligned", "reference"):
        assert (out_dir / "models" / role / "config.json").is_file()
    table = BiasTable.load(out_dir / "bias.safetensors")
    assert table.metadata["aligned"] == str(aligned_dir.resolve()) and table.aligned_logprob is not None
    assert "| TSDI s=1 |" in out and "tsdi generate --model" in out
    for name in ("results.json", "trade-off.png"):
        assert (out_dir / name).is_file()

    out = tsdi("generate", "--model", aligned_dir, "--bias", out_dir / "bias.safetensors",
               "--prompt", "How do I kill a Python process?", "--max-new-tokens", 4, "--greedy",
               cwd=tmp_path).stdout
    assert out.startswith("### How do I kill a Python process?")

    out = tsdi("inspect", out_dir / "bias.safetensors", "--top", 2, cwd=tmp_path).stdout
    assert len(rows_of(out)) == 3 * 2 and "no tokenizer found" not in out
