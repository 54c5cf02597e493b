"""The `tsdi` command line end to end in a temporary folder, and its one-line errors."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_llama, tiny_tokenizer

from tsdi_kernels import BiasTable
from tsdi_kernels.cli import common
from tsdi_kernels.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models on one thread


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
@pytest.mark.slow  # a subprocess that imports torch
def test_console_entry_point_has_no_traceback(models, tmp_path):
    """The real process: a mismatched vocabulary exits 2 with one line on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tsdi_kernels.cli", "estimate", "--aligned", models["aligned"],
                           "--reference", models["other"], "-o", str(tmp_path / "x.safetensors"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tsdi: error:")]
    assert len(errors) == 1 and "same vocabulary" in errors[0] and "Traceback" not in proc.stderr


# --- checks before expensive work, one line instead of a traceback (issue 11 items 5, 6) -------------------------


def write_checkpoint(path, **meta):
    """A checkpoint file as `tsdi estimate --num-prompts 8 --length 2 --batch-size 8` writes it (0 batches)."""
    header = {"format_version": 1, "kind": "tsdi-estimate-checkpoint", "batches_done": 0, "seed": 0,
              "num_prompts": 8, "batch_size": 8, "length": 2, "pool": "vocab", "prompt_tokens": [8, 32],
              "normalize": True, "vocab_size": 320, "use_chat_template": True, **meta}
    save_file({"mean": torch.zeros(2, 320), "m2": torch.zeros(2, 320), "count": torch.zeros(2, dtype=torch.int64)},
              str(path), metadata={k: json.dumps(v) for k, v in header.items()})


def write_adapter(path):
    save_file({"model.layers.0.mlp.up_proj.lora_A": torch.zeros(2, 32)}, str(path), metadata={"scale": "1.0"})


EST = ["estimate", "--aligned", "{aligned}", "--reference", "{ref}", "--num-prompts", "8", "--length", "2",
       "--batch-size", "8", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (EST + ["-o", "{tmp}"], "is a directory"),
    (EST + ["-o", "{tmp}/missing/x.safetensors"], "does not exist"),
    (EST + ["-o", "{tmp}/x.safetensors", "--checkpoint", "{tmp}/missing/run.ckpt"], "--checkpoint"),
    (EST + ["-o", "{tmp}/x.safetensors", "--checkpoint", "{tmp}/folder"], "is a directory"),
    (EST + ["-o", "{tmp}/x.safetensors", "--checkpoint", "{tmp}/huge.ckpt"], "batches_done"),
    (EST + ["-o", "{tmp}/x.safetensors", "--checkpoint", "{tmp}/null.ckpt"], "batches_done"),
    (EST + ["-o", "{tmp}/x.safetensors", "--checkpoint", "{tmp}/seed1.ckpt"], "seed=1"),
    (EST + ["-o", "{tmp}/x.safetensors", "--checkpoint", "{tmp}/x.safetensors"], "--checkpoint"),
    (EST + ["-o", "{tmp}/x.safetensors", "--device", "meta"], "--device: 'meta' is not supported"),
    (EST + ["-o", "{tmp}/x.safetensors", "--seed", "-1"], "--seed"),
    (EST + ["-o", "{tmp}/x.safetensors", "--pool", "{tmp}/folder"], "is a directory"),
    (EST[:2] + ["{tmp}/folder"] + EST[3:] + ["-o", "{tmp}/x.safetensors"], "no config.json"),
    (["generate", "--model", "{tmp}/folder", "--prompt", "x"], "no config.json"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--seed", "18446744073709551616"], "--seed"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--strength", "nan"], "expected a finite number"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--strength", "inf"], "expected a finite number"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--temperature", "inf"], "--temperature"),
    (["generate", "--model", "{aligned}", "--prompt", "x", "--device", "meta"], "--device"),
    (["generate", "--model", "{aligned}", "--bias", "{tmp}/fingerprint.safetensors", "--prompt", "x"],
     "tokenizer_fingerprint"),
    (["generate", "--model", "{aligned}", "--bias", "{tmp}/folder", "--prompt", "x"], "is a directory"),
    (["generate", "--model", "{aligned}", "--prompts-file", "{tmp}/folder"], "is a directory"),
    (["inspect", "{tmp}/fingerprint.safetensors"], "tokenizer_fingerprint"),
    (["inspect", "{tmp}/folder"], "is a directory"),
    (["inspect", "{tmp}/good.safetensors", "--plot", "{tmp}/missing/p.png"], "--plot"),
    (["inspect", "{tmp}/good.safetensors", "--plot", "{tmp}/folder"], "--plot"),
    (["demo", "--prompts", "{tmp}/nofile.json"], "--prompts"),
    (["demo", "--prompts", "{tmp}/folder"], "is a directory"),
    (["demo", "--adapter", "{tmp}/missing.safetensors"], "--adapter"),
    (["demo", "--adapter", "{tmp}/corrupt.safetensors"], "not a readable safetensors file"),
    (["demo", "--adapter", "{tmp}/noscale.safetensors"], "scale"),
    (["demo", "--strengths", "inf"], "--strengths"),
    (["demo", "--strengths", "nan"], "--strengths"),
    (["demo", "--temperature", "inf"], "--temperature"),
    (["demo", "--model", "{tmp}/folder"], "no config.json"),
    (["demo", "--out", "{tmp}/corrupt.safetensors"], "--out"),
    (["demo", "--seed", "-1"], "--seed"),
    (["eval", "--strengths", "-1"], "--strengths"),
    (["eval", "--strengths", "a"], "--strengths"),
    (["eval", "--margin", "101"], "--margin"),
    (["eval", "--margin", "-1"], "--margin"),
    (["eval", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "--batch-size", "x"], "--batch-size"),
    (["eval", "--strengths", "1", "--auto"], "not allowed with argument"),
    (["eval", "--greedy", "--sample"], "not allowed with argument"),
    (["eval", "--top-p", "0"], "--top-p"),
    (["eval", "--temperature", "0"], "--temperature"),
    (["eval", "--refine", "middle"], "--refine"),
    (["eval", "--engine", "tgi"], "--engine"),
    (["demo", "--strengths", "a,b"], "--strengths"),
    (["demo", "--strengths", "-1"], "--strengths"),
    (["demo", "--num-prompts", "0"], "--num-prompts"),
    (["demo", "--length", "x"], "--length"),
    (["demo", "--temperature", "-0.5"], "--temperature"),
])
def test_bad_paths_and_values_fail_before_anything_is_loaded(models, tmp_path, capsys, no_model_loading, argv,
                                                           message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage")
    write_checkpoint(tmp_path / "huge.ckpt", batches_done=10**9)
    write_checkpoint(tmp_path / "null.ckpt", batches_done=None)
    write_checkpoint(tmp_path / "seed1.ckpt", seed=1)
    write_checkpoint(tmp_path / "x.safetensors")
    table = BiasTable.empty(2, 320)
    table.save(tmp_path / "good.safetensors")
    table.copy(metadata={"tokenizer_fingerprint": 12345}).save(tmp_path / "fingerprint.safetensors")
    save_file({"x.lora_A": torch.zeros(2, 2)}, str(tmp_path / "noscale.safetensors"))
    argv = [a.format(tmp=tmp_path, **models) for a in argv]
    rc = main(argv)
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing done before the error (no table printed, no "loading ...")
    errors = [line for line in captured.err.splitlines() if line.startswith("tsdi: error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in captured.err, captured.err
    assert message in errors[0]


def test_multi_line_errors_are_reported_whole(models, tmp_path, capsys):
    """A tokenizer folder without a tokenizer: transformers' message has several lines; the whole of it is on the
    one error line (it used to stop at "Couldn't instantiate the backend tokenizer from one of:")."""
    (tmp_path / "empty").mkdir()
    rc = main(["generate", "--model", models["aligned"], "--tokenizer", str(tmp_path / "empty"), "--prompt", "x"])
    line = one_line_error(capsys, rc)
    assert "--tokenizer" in line and not line.rstrip().endswith(":")
    assert common.one_line(ValueError("one of:\n(1) a\n  (2) b\n")) == "ValueError: one of: (1) a (2) b"


def test_seed_range_is_int64(models, capsys):
    """Sampling seeds are int64: the extremes are accepted (row b uses seed + b, wrapping around)."""
    base = ["generate", "--model", models["aligned"], "--prompt", "x", "--prompt", "y", "--max-new-tokens", "2"]
    assert main(base + ["--seed", str(2**63 - 1)]) == 0
    assert main(base + ["--seed", str(-2**63)]) == 0
    capsys.readouterr()
    assert "--seed" in one_line_error(capsys, main(base + ["--seed", str(2**63)]))


def test_estimate_into_a_checkpoint_written_for_a_partial_last_batch(models, tmp_path, capsys):
    """The CLI resumes a finished checkpoint (count = num_prompts, last batch partial) without re-counting."""
    out, ckpt = tmp_path / "b.safetensors", tmp_path / "run.ckpt"
    argv = ["estimate", "--aligned", models["aligned"], "--reference", models["ref"], "-o", str(out),
            "--num-prompts", "10", "--batch-size", "4", "--length", "2", "--prompt-tokens", "2", "4",
            "--checkpoint", str(ckpt), "--no-progress"]
    assert main(argv) == 0
    first = BiasTable.load(out)
    assert main(argv) == 0
    capsys.readouterr()
    again = BiasTable.load(out)
    assert again.count.tolist() == [10, 10] and torch.equal(again.mean, first.mean)


# --- a newcomer's first hour (issue 12) ----------------------------------------------------------------------

# Runs main() as the `tsdi` console script does (sys.argv[0] == "tsdi": the package skips registering the ops),
# then lists which heavy modules the process imported.
NO_TORCH_PROBE = """
import sys
sys.argv = ["tsdi"] + sys.argv[1:]
from tsdi_kernels.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print("HEAVY", sorted(m for m in ("torch", "transformers") if m in sys.modules))
sys.exit(rc)
"""


@pytest.mark.parametrize("argv, rc", [
    (["--help"], 0),
    (["generate", "--help"], 0),
    (["demo", "--help"], 0),
    (["estimate", "--aligned", "x"], 2),
    (["generate", "--model", "m", "--prompt", "x", "--strength", "nan"], 2),
    (["generate", "--model", "m", "--prompt", "x", "--device", "meta"], 2),
    (["generate", "--model", "/no/such/model", "--prompt", "x"], 2),
    (["inspect", "/no/such/table.safetensors"], 2),
    (["frobnicate"], 2),
], ids=["help", "generate-help", "demo-help", "missing-option", "bad-strength", "bad-device", "missing-model",
        "missing-table", "unknown-command"])
def test_help_and_argument_errors_do_not_import_torch(argv, rc):
    """`tsdi --help` and argument errors answer without importing torch or transformers (seconds otherwise)."""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == rc, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-300:]
    if rc == 2:
        assert proc.stderr.count("tsdi: error:") == 1
def test_console_script_help_does_not_import_torch():
    """The installed script itself, under -X importtime (what a user runs)."""
    script = os.path.join(os.path.dirname(sys.executable), "tsdi")
    if not os.path.exists(script):
        pytest.skip("the tsdi console script is not installed in this environment")
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "estimate" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "tsdi_kernels.cli" in imported and not {"torch", "transformers"} & imported
@pytest.mark.slow  # a subprocess that imports torch
def test_the_package_still_registers_the_ops_outside_the_cli():
    """The contract: `import tsdi_kernels` registers torch.ops.tsdi (also when a program named tsdi has torch
    imported already); under the CLI the kernel names are served on first use."""
    code = """
import sys
sys.argv[0] = "tsdi"
import torch
import tsdi_kernels
assert hasattr(torch.ops.tsdi, "debias_sample") and hasattr(torch.ops.tsdi, "logit_mean_update")
print("OK", tsdi_kernels.debias_sample.__module__)
"""
    assert hasattr(torch.ops.tsdi, "debias_sample")  # this process: pytest imported tsdi_kernels the usual way
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    lazy = """
import sys
sys.argv = ["tsdi"]
import tsdi_kernels
assert "torch" not in sys.modules
fn = tsdi_kernels.debias_sample          # served lazily: registers the ops
import torch
assert hasattr(torch.ops.tsdi, "debias_sample") and callable(fn) and "backends" in dir(tsdi_kernels)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_help_documents_negative_strength_and_tokenizer(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "NEGATIVE strength adds the bias" in out and "probe" in out
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--tokenizer" in out and "--probe" in out and "--plot" in out


def test_negative_strength_is_a_probe(models, tmp_path, capsys):
    table = tmp_path / "b.safetensors"
    assert main(["estimate", "--aligned", models["aligned"], "--reference", models["ref"], "-o", str(table),
                 "--num-prompts", "8", "--length", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", models["aligned"], "--bias", str(table), "--prompt", "hello",
                 "--max-new-tokens", "3", "--greedy", "--strength", "-1"]) == 0
    captured = capsys.readouterr()
    assert "### hello" in captured.out and "amplifies" in captured.err


def test_inspect_ranks_what_matters_and_falls_back_for_older_tables(models, tmp_path, capsys):
    table_path = tmp_path / "b.safetensors"
    assert main(["estimate", "--aligned", models["aligned"], "--reference", models["ref"], "-o", str(table_path),
                 "--num-prompts", "8", "--length", "2", "--no-progress", "--tokenizer", models["aligned"]]) == 0
    capsys.readouterr()
    table = BiasTable.load(table_path)
    assert table.metadata["tokenizer"] == models["aligned"]
    assert main(["inspect", str(table_path), "--top", "2", "--probe", "I", "--probe", "Sure"]) == 0
    out = capsys.readouterr().out
    assert "p_aligned" in out and "pos 1: strength 1 moves" in out and "openers" in out
    tok = tiny_tokenizer()
    expected = [row.token_id for row in table.ranked_tokens(0, 2, tok)]
    shown = [int(line.split()[2]) for line in out.splitlines() if line.startswith("  0")]
    assert shown == expected
    # an older table (no aligned_logprob) ranks by raw bias and says so; a table without a tokenizer folder notes it
    older = table.copy(metadata={**table.metadata, "aligned": "org/model", "tokenizer": "org/model"})
    older.aligned_logprob = None
    older.save(tmp_path / "old.safetensors")
    assert main(["inspect", str(tmp_path / "old.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "ranked by raw bias" in out and "no tokenizer found" in out and "--tokenizer" in out
    rc = main(["inspect", str(tmp_path / "old.safetensors"), "--by", "moved"])
    assert "aligned_logprob" in one_line_error(capsys, rc)
    plot = tmp_path / "old.png"
    assert main(["inspect", str(tmp_path / "old.safetensors"), "--tokenizer", models["ref"], "--plot",
                 str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
