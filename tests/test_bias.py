"""BiasTable: statistics, file format (round trip, validation, atomic write), tokenizer check, ranked_tokens."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_tokenizer

import tsdi_kernels
from tsdi_kernels import BiasTable
from tsdi_kernels.pipeline.bias import FORMAT_VERSION, tokenizer_fingerprint


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models on one thread


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_table(tok, length=3, rows=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    vocab = len(tok)
    acc = BiasTable.empty(length, vocab)
    acc.update(torch.randn(rows, length, vocab, generator=gen), torch.randn(rows, length, vocab, generator=gen))
    meta = {"aligned": "a", "reference": "r", "tokenizer_fingerprint": tokenizer_fingerprint(tok), "seed": seed,
            "prompt_tokens": [8, 32], "normalize": True}
    return acc.copy(metadata=meta), acc


def test_statistics_match_the_accumulator(tok):
    table, acc = make_table(tok)
    assert (table.length, table.vocab_size) == (3, len(tok))
    torch.testing.assert_close(table.stderr, acc.stderr)
    assert table.count.tolist() == [16, 16, 16]
    assert "L=3" in repr(table)


def test_save_load_round_trip(tok, tmp_path):
    table, _ = make_table(tok)
    path = tmp_path / "bias.safetensors"
    table.save(path)
    loaded = BiasTable.load(path, tokenizer=tok)
    for name in ("mean", "m2", "count"):
        assert torch.equal(getattr(loaded, name), getattr(table, name)), name
    assert loaded.metadata["prompt_tokens"] == [8, 32]  # JSON round trip keeps types
    assert loaded.metadata["format_version"] == FORMAT_VERSION
    assert loaded.metadata["package_version"] == tsdi_kernels.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["bias.safetensors"]  # no temporary file left behind


def test_save_is_atomic(tok, tmp_path, monkeypatch):
    """A failed write leaves the previous file intact and no temporary file."""
    table, _ = make_table(tok)
    path = tmp_path / "bias.safetensors"
    table.save(path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        make_table(tok, seed=1)[0].save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bias.safetensors"]


def test_load_refuses_another_vocabulary(tok, tmp_path):
    table, _ = make_table(tok)
    path = tmp_path / "bias.safetensors"
    table.save(path)
    other = tiny_tokenizer(vocab_size=300)
    with pytest.raises(ValueError, match="different tokenizer vocabulary"):
        BiasTable.load(path, tokenizer=other)
    bigger = tiny_tokenizer(vocab_size=400)
    with pytest.raises(ValueError, match="estimated for another vocabulary"):
        BiasTable.load(path, tokenizer=bigger)


@pytest.mark.parametrize("case", ["missing-tensor", "bad-version", "no-version", "bad-shape", "bad-dtype", "garbage"])
def test_load_validates(tok, tmp_path, case):
    table, _ = make_table(tok)
    tensors = {"mean": table.mean, "m2": table.m2, "count": table.count}
    meta = {"format_version": json.dumps(FORMAT_VERSION)}
    if case == "missing-tensor":
        del tensors["m2"]
    elif case == "bad-version":
        meta["format_version"] = "99"
    elif case == "no-version":
        meta = {}
    elif case == "bad-shape":
        tensors["count"] = torch.zeros(7, dtype=torch.int64)
    elif case == "bad-dtype":
        tensors["mean"] = table.mean.double()
    path = tmp_path / "t.safetensors"
    if case == "garbage":
        path.write_bytes(b"\x00not a safetensors file at all")
    else:
        save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError):
        BiasTable.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BiasTable.load(tmp_path / "nope.safetensors")


def test_constructor_validates():
    mean = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="`m2`"):
        BiasTable(mean, torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="`count`"):
        BiasTable(mean, torch.zeros(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="`mean`"):
        BiasTable(torch.zeros(5), torch.zeros(2, 5), torch.zeros(2, dtype=torch.int64))


def test_ranked_tokens_by_bias(tok):
    table, _ = make_table(tok)
    top = table.ranked_tokens(1, 4, tok, by="bias", skip_special=False)
    assert len(top) == 4
    expected = torch.topk(table.mean[1], 4)
    assert [row.token_id for row in top] == expected.indices.tolist()
    assert all(isinstance(row.text, str) for row in top)
    assert [row.bias for row in top] == pytest.approx(expected.values.tolist())
    assert [row.stderr for row in top] == pytest.approx(table.stderr[1, expected.indices].tolist())
    bottom = table.ranked_tokens(1, 2, by="bias", largest=False)
    assert bottom[0].token_id == int(table.mean[1].argmin()) and bottom[0].text is None
    with pytest.raises(ValueError, match="`t`"):
        table.ranked_tokens(3, 4, by="bias")
    with pytest.raises(ValueError, match="`k`"):
        table.ranked_tokens(0, 0, by="bias")


def test_to_device(tok):
    table, _ = make_table(tok)
    moved = table.to("cpu")
    assert moved is not table and torch.equal(moved.mean, table.mean) and moved.metadata == table.metadata


def write_table(path, tensors, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in meta.items()})


@pytest.mark.parametrize("case, field", [
    ("nan-mean", "`mean`"), ("inf-mean", "`mean`"), ("nan-m2", "`m2`"), ("inf-m2", "`m2`"),
    ("negative-m2", "`m2`"), ("negative-count", "`count`"),
    ("version-true", "format_version"), ("version-string", "format_version"), ("version-float", "format_version"),
    ("fingerprint-int", "tokenizer_fingerprint"), ("fingerprint-list", "tokenizer_fingerprint"),
    ("normalize-string", "normalize"), ("length-string", "length"), ("vocab-bool", "vocab_size"),
])
def test_load_refuses_bad_values_naming_file_and_field(tok, tmp_path, case, field):
    """A file is validated, never trusted: statistics that no estimation produces, or metadata of the wrong type,
    are a ValueError naming the file and the field (not NaN tables, -inf logits or a TypeError later)."""
    table, _ = make_table(tok)
    tensors = {"mean": table.mean.clone(), "m2": table.m2.clone(), "count": table.count.clone()}
    meta = {"format_version": FORMAT_VERSION, "tokenizer_fingerprint": tokenizer_fingerprint(tok)}
    kind, _, what = case.partition("-")
    if case in ("nan-mean", "inf-mean", "nan-m2", "inf-m2"):
        tensors[what][1, 5] = float(kind)
    elif case == "negative-m2":
        tensors["m2"][0, 0] = -1.0
    elif case == "negative-count":
        tensors["count"][2] = -3
    elif case == "version-true":
        meta["format_version"] = True  # JSON true == 1 in Python: must not pass for version 1
    elif case == "version-string":
        meta["format_version"] = "1"
    elif case == "version-float":
        meta["format_version"] = 1.0
    elif case == "fingerprint-int":
        meta["tokenizer_fingerprint"] = 12345
    elif case == "fingerprint-list":
        meta["tokenizer_fingerprint"] = ["sha256:"]
    elif case == "normalize-string":
        meta["normalize"] = "yes"
    elif case == "length-string":
        meta["length"] = "3"
    elif case == "vocab-bool":
        meta["vocab_size"] = True
    path = tmp_path / "t.safetensors"
    write_table(path, tensors, meta)
    with pytest.raises(ValueError) as info:
        BiasTable.load(path, tokenizer=tok)
    assert field in str(info.value) and str(path) in str(info.value)


def test_load_a_directory_or_fifo_says_what_it_is(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        BiasTable.load(tmp_path)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # and never opens it (that would block)
        BiasTable.load(fifo)


@pytest.mark.parametrize("name, tensors", [
    ("`mean`", (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), torch.ones(1, dtype=torch.int64))),
    ("`m2`", (torch.zeros(1, 2), torch.tensor([[0.0, -1.0]]), torch.ones(1, dtype=torch.int64))),
    ("`count`", (torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([-1]))),
])
def test_constructor_refuses_bad_statistics(name, tensors):
    """A negative count would make every later logit_mean_update divide by a wrong n (-inf means, silently)."""
    with pytest.raises(ValueError, match=name):
        BiasTable(*tensors)


def test_check_tokenizer_with_a_non_string_fingerprint(tok):
    table, _ = make_table(tok)
    table.metadata["tokenizer_fingerprint"] = 7
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        table.check_tokenizer(tok)


# --- aligned_logprob and the ranking by probability moved (issue 12) ------------------------------------------


def table_with_logprob(tok, length=2):
    """A table where token `junk` has a huge bias but no probability, and token `sorry` a moderate bias and most of
    the aligned model's probability: only `sorry` matters when debiasing."""
    vocab = len(tok)
    junk, sorry, sure = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("I"), tok.convert_tokens_to_ids("S")
    mean = torch.zeros(length, vocab)
    mean[:, junk], mean[:, sorry], mean[:, sure] = 12.0, 3.0, -2.0
    special = tok.all_special_ids[0]
    mean[:, special] = 20.0
    logits = torch.full((length, vocab), -8.0)
    logits[:, junk], logits[:, special] = -30.0, -30.0
    logits[:, sorry], logits[:, sure] = 4.0, 2.0
    lp = torch.log_softmax(logits, -1)
    m2 = torch.full((length, vocab), 0.5)
    table = BiasTable(mean, m2, torch.full((length,), 10, dtype=torch.int64), {"normalize": True},
                      aligned_logprob=lp)
    return table, junk, sorry, sure, special


def test_ranked_by_probability_moved_skips_junk_and_special_tokens(tok):
    table, junk, sorry, sure, special = table_with_logprob(tok)
    by_bias = [row.token_id for row in table.ranked_tokens(0, 3, tok, by="bias", skip_special=False)]
    assert by_bias[:2] == [special, junk]  # what a ranking by raw bias shows: nothing that matters
    taken = table.ranked_tokens(0, 3, tok)
    assert taken[0].token_id == sorry and junk not in [r.token_id for r in taken]
    row = taken[0]
    assert row.text == tok.decode([sorry]) and row.bias == 3.0 and row.p_aligned > 0.5
    assert row.p_debiased < row.p_aligned and abs(row.moved - (row.p_aligned - row.p_debiased)) < 1e-6
    given = table.ranked_tokens(0, 3, tok, largest=False)
    assert given[0].token_id == sure and all(r.p_debiased > r.p_aligned for r in given)
    assert 0.0 < table.total_variation(0) < 1.0 and table.total_variation(0, 0.0) == 0.0
    assert table.total_variation(0, 2.0) > table.total_variation(0, 1.0)
    stats = table.token_stats(1, [sorry, junk])
    assert [s.token_id for s in stats] == [sorry, junk] and stats[1].moved < 1e-9


def test_aligned_logprob_round_trip_and_older_tables(tok, tmp_path):
    table, *_ = table_with_logprob(tok)
    path = tmp_path / "t.safetensors"
    table.save(path)
    loaded = BiasTable.load(path)
    assert torch.equal(loaded.aligned_logprob, table.aligned_logprob)
    assert torch.equal(loaded.copy().aligned_logprob, table.aligned_logprob)
    assert torch.equal(loaded.to("cpu").aligned_logprob, table.aligned_logprob)
    older, _ = make_table(tok)  # no aligned_logprob: still loads, ranks by bias only
    older.save(path)
    loaded = BiasTable.load(path)
    assert loaded.aligned_logprob is None
    assert loaded.ranked_tokens(0, 2, tok, by="bias")
    with pytest.raises(ValueError, match="aligned_logprob"):
        loaded.ranked_tokens(0, 2, tok)


@pytest.mark.parametrize("bad, message", [
    (lambda lp: lp[:1], "aligned_logprob"),
    (lambda lp: lp.double(), "aligned_logprob"),
    (lambda lp: lp.index_fill(1, torch.tensor([0]), float("nan")), "non-finite"),
    (lambda lp: lp.index_fill(1, torch.tensor([0]), 0.5), "> 0"),
], ids=["shape", "dtype", "nan", "positive"])
def test_bad_aligned_logprob_is_refused_on_load(tok, tmp_path, bad, message):
    table, *_ = table_with_logprob(tok)
    path = tmp_path / "t.safetensors"
    header = {"format_version": json.dumps(FORMAT_VERSION)}
    save_file({"mean": table.mean, "m2": table.m2, "count": table.count,
               "aligned_logprob": bad(table.aligned_logprob).contiguous()}, str(path), metadata=header)
    with pytest.raises(ValueError, match=message) as info:
        BiasTable.load(path)
    assert "t.safetensors" in str(info.value)


def test_merge_keeps_aligned_logprob_only_when_both_have_it(tok):
    a, *_ = table_with_logprob(tok)
    b, *_ = table_with_logprob(tok)
    b.aligned_logprob = b.aligned_logprob - 1.0
    merged = a.copy()
    merged.merge(b)  # equal counts: the plain average
    torch.testing.assert_close(merged.aligned_logprob, a.aligned_logprob - 0.5)
    c = a.copy()
    c.merge(BiasTable(a.mean.clone(), a.m2.clone(), a.count.clone()))
    assert c.aligned_logprob is None
