"""The `tsdi` command line end to end in a temporary folder, and its one-line errors."""
import os
import subprocess
import sys

import pytest
from tiny_models import single_thread, tiny_llama, tiny_tokenizer

from tsdi_kernels import BiasTable
from tsdi_kernels.cli import main


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models with the same vocabulary and one with another (folders as from_pretrained reads them)."""
    root = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    paths = {}
    for name, seed, tokenizer in (("ref", 0, tok), ("aligned", 1, tok), ("other", 2, tiny_tokenizer(300))):
        model = tiny_llama(len(tokenizer), tokenizer=tokenizer, seed=seed)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    errors = [line for line in err if line.startswith("tsdi: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def test_estimate_inspect_generate(models, tmp_path, capsys):
    table_path = tmp_path / "bias.safetensors"
    rc = main(["estimate", "--aligned", models["aligned"], "--reference", models["ref"], "-o", str(table_path),
               "--num-prompts", "24", "--length", "3", "--batch-size", "8", "--prompt-tokens", "2", "6",
               "--checkpoint", str(tmp_path / "ckpt"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    table = BiasTable.load(table_path)
    assert table.length == 3 and table.count.tolist() == [24] * 3
    assert table.metadata["aligned"] == models["aligned"] and table.metadata["prompt_tokens"] == [2, 6]

    plot = tmp_path / "bias.png"
    assert main(["inspect", str(table_path), "--top", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(lines) == 3 * 3  # 3 positions x top 3
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    common = ["generate", "--model", models["aligned"], "--bias", str(table_path), "--prompt", "hello",
              "--prompt", "the quick brown fox", "--max-new-tokens", "6", "--greedy"]
    assert main(common) == 0
    fused = capsys.readouterr().out
    assert main(common + ["--hf"]) == 0
    assert capsys.readouterr().out == fused  # greedy: fused loop and HF + processor print the same answers
    assert fused.count("### ") == 2
    assert main(common[:-1] + ["--top-p", "0.9", "--temperature", "0.7", "--seed", "3"]) == 0
    capsys.readouterr()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n\nthe quick brown fox\n", encoding="utf-8")  # blank lines are skipped
    assert main(["generate", "--model", models["aligned"], "--bias", str(table_path), "--prompts-file", str(prompts),
                 "--max-new-tokens", "6", "--greedy"]) == 0
    assert capsys.readouterr().out == fused


def test_inspect_with_tokenizer_and_bottom(models, tmp_path, capsys):
    table_path = tmp_path / "b.safetensors"
    assert main(["estimate", "--aligned", models["aligned"], "--reference", models["ref"], "-o", str(table_path),
                 "--num-prompts", "8", "--length", "2", "--no-progress", "--raw-logits"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(table_path), "--tokenizer", models["ref"], "--bottom", "--positions", "1"]) == 0
    out = capsys.readouterr().out
    assert "normalize=False" in out and len([x for x in out.splitlines() if x.startswith("  0")]) == 5
    # a table used with another vocabulary is refused
    rc = main(["inspect", str(table_path), "--tokenizer", models["other"]])
    assert "different tokenizer vocabulary" in one_line_error(capsys, rc)


@pytest.mark.parametrize("argv, message", [
    (["estimate", "--aligned", "{aligned}", "--reference", "{other}", "-o", "{tmp}/x.safetensors",
      "--num-prompts", "8", "--length", "2"], "same vocabulary"),
    (["estimate", "--aligned", "{tmp}/missing", "--reference", "{ref}", "-o", "{tmp}/x.safetensors"],
     "no such model folder"),
    (["estimate", "--aligned", "{aligned}", "--reference", "{ref}", "-o", "{tmp}/x.safetensors",
      "--num-prompts", "0"], "--num-prompts"),
    (["estimate", "--aligned", "{aligned}", "--reference", "{ref}", "-o", "{tmp}/x.safetensors",
      "--prompt-tokens", "9", "2"], "--prompt-tokens"),
    (["estimate", "--aligned", "{aligned}", "--reference", "{ref}", "-o", "{tmp}/x.safetensors",
      "--pool", "{tmp}/corpus.txt"], "--pool"),
    (["estimate", "--aligned", "{aligned}", "--reference", "{ref}", "-o", "{tmp}/no/dir/x.safetensors"],
     "--output"),
    (["estimate", "--aligned", "{aligned}"], "required"),
    (["generate", "--model", "{aligned}", "--bias", "{tmp}/nope.safetensors", "--prompt", "x"], "--bias"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--top-p", "1.5"], "--top-p"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--temperature", "0"], "--temperature"),
    (["generate", "--model", "{aligned}"], "--prompt"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--device", "cuda:7"], "--device"),
    (["inspect", "{tmp}/nope.safetensors"], "no such file"),
    (["inspect", "{tmp}/corrupt.safetensors"], "not a readable safetensors file"),
    (["frobnicate"], "invalid choice"),
], ids=["vocab-mismatch", "missing-model", "zero-prompts", "prompt-range", "missing-pool", "missing-out-dir",
        "missing-option", "missing-bias", "top-p", "temperature", "no-prompt", "no-cuda", "missing-table",
        "corrupt-table", "unknown-command"])
def test_user_mistakes_print_one_line(models, tmp_path, capsys, argv, message):
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage")
    argv = [a.format(tmp=tmp_path, **models) for a in argv]
    rc = main(argv)
    assert message in one_line_error(capsys, rc)


def test_help_explains_every_command(capsys):
    for command in ("estimate", "inspect", "generate", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--num-prompts", "--checkpoint", "--plot", "--strength", "--top-p"):
        assert option in out


def test_demo_is_delegated_or_reported(monkeypatch, capsys):
    import tsdi_kernels

    # as if demo.py could not be imported (an earlier import would also have left it as a package attribute)
    monkeypatch.setitem(sys.modules, "tsdi_kernels.demo", None)
    monkeypatch.delattr(tsdi_kernels, "demo", raising=False)
    rc = main(["demo", "--anything"])
    assert "demo is not available" in one_line_error(capsys, rc)


def test_console_entry_point_has_no_traceback(models, tmp_path):
    """The real process: a mismatched vocabulary exits 2 with one line on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tsdi_kernels.cli", "estimate", "--aligned", models["aligned"],
                           "--reference", models["other"], "-o", str(tmp_path / "x.safetensors"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tsdi: error:")]
    assert len(errors) == 1 and "same vocabulary" in errors[0] and "Traceback" not in proc.stderr
