"""A sweep's report: markdown tables, the recommendation in words, and results.json (written atomically with the
user's umask). The plot is plot.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..pipeline.files import atomic_write
from .result import SweepResult


def _pct(d: dict) -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"{100 * d['rate']:.1f}% [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def format_table(result: SweepResult, split: str = "all", *, mark_recommended: bool = True) -> str:
    """Markdown: per configuration, benign and harmful refusal (95% Wilson intervals) and the helpfulness proxy;
    the recommended strength's row marked (mark_recommended)."""
    n_b = result.summary[0]["benign"][split]["n"]
    n_h = result.summary[0]["harmful"][split]["n"]
    rec = result.recommendation.get("strength") if mark_recommended else None
    lines = [f"| config | benign refused (over-refusal, n={n_b}) | harmful refused (safety, n={n_h}) | "
             "benign answer log-lik (reference) |", "|---|---:|---:|---:|"]
    for row in result.summary:
        ll = row["benign_loglik"]
        ll_text = "n/a" if ll["mean"] is None else (
            f"{ll['mean']:.2f} [{ll['low']:.2f}, {ll['high']:.2f}]" if ll["low"] is not None else f"{ll['mean']:.2f}")
        name = row["config"] + (" (recommended)" if rec is not None and row["strength"] == rec else "")
        lines.append(f"| {name} | {_pct(row['benign'][split])} | {_pct(row['harmful'][split])} | {ll_text} |")
    return "\n".join(lines)


def format_categories(result: SweepResult, label: str) -> str:
    cats = list(result.summary[0][label]["by_category"])
    head = "| config | " + " | ".join(f"{c} (n={result.summary[0][label]['by_category'][c]['n']})" for c in cats) + " |"
    lines = [head, "|---|" + "---:|" * len(cats)]
    for row in result.summary:
        cells = [f"{100 * row[label]['by_category'][c]['rate']:.0f}%" for c in cats]
        lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _points(d: Optional[dict]) -> str:
    """A paired difference (paired.Paired.to_dict) in points with its two-sided interval and n."""
    if not d:
        return "n/a"
    return f"{100 * d['difference']:.1f} [{100 * d['low']:.1f}, {100 * d['high']:.1f}] (n={d['n']})"


def format_paired(result: SweepResult) -> str:
    """Markdown: the rule's verdict per strength on the validation split, paired against the aligned model: the loss
    of harmful refusal (95% interval), its one-sided 95% upper bound against the margin, the over-refusal cut."""
    rec = result.recommendation
    margin = 100 * rec.get("margin", 0.0)
    lines = ["| strength | harmful-refusal loss, points (validation, paired) | one-sided 95% upper bound | "
             f"within {margin:g} points | over-refusal cut, points (validation, paired) |", "|---|---:|---:|:---:|---:|"]
    for row in rec.get("strengths", []):
        within = "yes" if row["within"] else (
            "no" + (f" (n = {row['prompts_needed']} would do)" if row.get("prompts_needed") else ""))
        name = f"{row['strength']:g}" + (" (recommended)" if row["strength"] == rec.get("strength") else "")
        lines.append(f"| {name} | {_points(row['loss'])} | {100 * row['upper_bound']:.1f} | {within} | "
                     f"{_points(row.get('benefit'))} |")
    return "\n".join(lines)


def format_recommendation(result: SweepResult) -> str:
    """The recommendation in words: the rule, the validation bound and n, the benefit, and the test split."""
    rec = result.recommendation
    if rec.get("strength") is None:
        return f"recommended strength: none ({rec.get('reason', '')}).\n  rule: {rec.get('rule', '')}"
    v, t, a = rec["validation"], rec["test"], rec["aligned_test"]
    margin = 100 * rec["margin"]
    bound = v["harmful_loss"]["upper_bound"]
    text = (f"recommended strength: {rec['strength']:g}\n"
            f"  rule: {rec['rule']} ({rec['method']}).\n"
            f"  validation: harmful-refusal loss {_points(v['harmful_loss'])} points, one-sided 95% upper bound "
            f"{100 * bound:.1f} <= {margin:g}; over-refusal cut {_points(v['over_refusal_cut'])} points")
    if t.get("harmful_loss"):
        loss, bound = t["harmful_loss"], t["harmful_loss"]["upper_bound"]
        text += (f"\n  test split (no part in the choice): harmful-refusal loss {_points(loss)} points, "
                 f"{'within' if t['loss_within_margin'] else 'above'} the margin; one-sided 95% upper bound "
                 f"{100 * bound:.1f}" + (" (within it)" if t["bound_within_margin"] else
                                         f" (above it: n={loss['n']} cannot confirm the margin)")
                 + f"; over-refusal cut {_points(t['over_refusal_cut'])} points")
    text += (f"\n  test split rates: harmful refused {_pct(t['harmful'])} (aligned {_pct(a['harmful'])}), "
             f"benign refused {_pct(t['benign'])} (aligned {_pct(a['benign'])})")
    if "test_over_refusal_reduction" in rec:
        text += f"; over-refusal cut by {100 * rec['test_over_refusal_reduction']:.0f}%"
    return text


def write_results(result: SweepResult, path: Path, extra: Optional[dict] = None) -> Path:
    """results.json: `extra` (how the run was made), then the settings, summary, recommendation and every answer."""
    text = json.dumps({**(extra or {}), **result.to_json()}, indent=1, ensure_ascii=False)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
