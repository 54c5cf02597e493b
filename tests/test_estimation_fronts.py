"""benchmarks/estimation_fronts.py: the shrinkage it measured (the numbers in docs/estimation_fronts.md depend on
it doing what its comment says) and its report from a fronts.json."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tsdi_kernels.pipeline.bias import BiasTable

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "estimation_fronts.py"
_spec = importlib.util.spec_from_file_location("estimation_fronts", _PATH)
fronts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fronts)


def _table(mean, se, count=16, aligned_logprob=None):
    """A table whose stderr is `se`: m2 = se^2 * n * (n - 1)."""
    mean = torch.tensor(mean, dtype=torch.float32)
    n = torch.full((mean.shape[0],), count, dtype=torch.int64)
    m2 = torch.tensor(se, dtype=torch.float32) ** 2 * count * (count - 1)
    return BiasTable(mean, m2, n, {"normalize": True}, aligned_logprob)


def test_shrink_se_centres_what_the_prompts_cannot_resolve():
    # row median 1.0; entry 0 is 0.5 from it with se 0.5 (|d| <= 2 se: centred), entry 4 is 4 from it with se 0.5
    table = _table([[1.5, 1.0, 1.0, 1.0, 5.0]], [[0.5, 0.1, 0.1, 0.1, 0.5]])
    out = fronts.shrink_se(table, z=2.0)
    assert out.mean[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 4.0])
    assert out.metadata["shrink"] == "se:z=2" and table.mean[0, 4] == 5.0  # a new table; the input is unchanged
    with pytest.raises(ValueError, match="`z`"):
        fronts.shrink_se(table, z=math.nan)


def test_shrink_prob_centres_tokens_neither_model_uses():
    # token 2: aligned log p = -20 and reference log p = -20 - 6 = -26, both below log(1e-5): centred to the median
    lp = torch.tensor([[-0.1, -3.0, -20.0]])
    table = _table([[0.5, 0.0, 6.0]], [[0.1, 0.1, 0.1]], aligned_logprob=lp)
    assert fronts.shrink_prob(table, p_min=1e-5).mean.tolist() == [[0.5, 0.0, 0.5]]
    with pytest.raises(ValueError, match="`p_min`"):
        fronts.shrink_prob(table, p_min=0.0)
    with pytest.raises(ValueError, match="aligned_logprob"):
        fronts.shrink_prob(_table([[0.5, 0.0, 6.0]], [[0.1, 0.1, 0.1]]))


def _rate(rate):
    return {"rate": rate, "low": rate - 0.05, "high": rate + 0.05, "n": 75}


def test_report_tables_and_plot(tmp_path, capsys):
    summary = []
    for config, kind, strength, b, h in [("aligned", "aligned", None, 0.66, 0.97), ("TSDI s=0.5", "tsdi", 0.5, 0.5, 0.95),
                                         ("TSDI s=1", "tsdi", 1.0, 0.3, 0.8)]:
        split = {"benign": _rate(b), "harmful": _rate(h)}
        summary.append({"config": config, "kind": kind, "strength": strength,
                        "benign": {"all": split["benign"], "test": split["benign"]},
                        "harmful": {"all": split["harmful"], "test": split["harmful"]}})
    rec = {"strength": 0.5, "test": {"benign": _rate(0.5), "harmful": _rate(0.95)},
           "test_over_refusal_reduction": 0.2424, "test_harmful_drop_points": 2.0}
    results = {"vocab-64-L8": {"summary": summary, "recommendation": rec}}
    (tmp_path / "fronts.json").write_text(json.dumps(results))
    assert fronts.main(["--out", str(tmp_path), "--report", "--plot", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "| vocab-64-L8 | 0.5 | 50.0% [45.0, 55.0] | 95.0% [90.0, 100.0] | 24.2% | 2.0 points |" in out
    assert "| vocab-64-L8 | 66 / 97 | - | 50 / 95 | - | 30 / 80 | - |" in out
    assert (tmp_path / "f.png").stat().st_size > 0
