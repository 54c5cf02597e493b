"""The Pareto plot of a sweep: over-refusal (benign prompts refused, x, lower is better) against safety (harmful
prompts refused, y, higher is better), with 95% Wilson interval bars on both axes, TSDI points labelled by strength
and joined in strength order from the aligned model, reference and aligned marked, the recommendation starred.
TSDI points that (nearly) coincide share one label ("s=0.5, 0.75"), so no two labels print on top of each other."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

LABEL_DISTANCE = 0.03  # points closer than this (axis units, rates in [0, 1]) share a label: ~8-point text at 120 dpi


def strength_labels(points: Sequence[tuple[float, float, float]],
                    distance: float = LABEL_DISTANCE) -> list[tuple[float, float, str]]:
    """(x, y, text) labels for TSDI points (x, y, strength): points within `distance` of a labelled point (max norm)
    join its label, in strength order, so labels never overlap on coinciding points."""
    groups: list[list[tuple[float, float, float]]] = []
    for x, y, s in sorted(points, key=lambda p: p[2]):
        for g in groups:
            if max(abs(x - g[0][0]), abs(y - g[0][1])) < distance:
                g.append((x, y, s))
                break
        else:
            groups.append([(x, y, s)])
    return [(g[0][0], g[0][1], "s=" + ", ".join(f"{s:g}" for _, _, s in g)) for g in groups]


def plot_pareto(result, path, *, split: str = "all", title: Optional[str] = None) -> Path:
    """Write the plot of `result` (a SweepResult, or its summary list) to `path` (PNG by extension, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    summary = result.summary if hasattr(result, "summary") else result
    rec = getattr(result, "recommendation", {}).get("strength") if hasattr(result, "recommendation") else None

    def point(row):
        b, h = row["benign"][split], row["harmful"][split]
        return (b["rate"], h["rate"], (b["rate"] - b["low"], b["high"] - b["rate"]),
                (h["rate"] - h["low"], h["high"] - h["rate"]))

    fig, ax = plt.subplots(figsize=(7, 5.2))
    style = {"reference": ("tab:gray", "s", "reference"), "aligned": ("tab:red", "D", "aligned"),
             "tsdi": ("tab:green", "o", "aligned + TSDI")}
    curve = sorted([r for r in summary if r["kind"] in ("aligned", "tsdi")], key=lambda r: r["strength"] or 0.0)
    if len(curve) > 1:
        ax.plot([point(r)[0] for r in curve], [point(r)[1] for r in curve], "-", color="tab:green", alpha=0.4,
                zorder=1)
    seen = set()
    for row in summary:
        x, y, xerr, yerr = point(row)
        color, marker, label = style[row["kind"]]
        ax.errorbar([x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt=marker, color=color,
                    ecolor=color, elinewidth=0.8, capsize=2, alpha=0.9, markersize=6, zorder=3,
                    label=None if label in seen else label)
        seen.add(label)
        if row["kind"] != "tsdi":
            ax.annotate(row["config"], (x, y), textcoords="offset points", xytext=(5, -11), fontsize=8, color=color)
        if rec is not None and row["strength"] == rec:
            ax.scatter([x], [y], marker="*", s=260, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4,
                       label=f"recommended (s={rec:g})")
    tsdi = [(*point(row)[:2], row["strength"]) for row in summary if row["kind"] == "tsdi"]
    for x, y, text in strength_labels(tsdi):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    n_b, n_h = summary[0]["benign"][split]["n"], summary[0]["harmful"][split]["n"]
    ax.set_xlabel(f"benign prompts refused (over-refusal, n={n_b}; lower is better)")
    ax.set_ylabel(f"harmful prompts refused (safety, n={n_h}; higher is better)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"TSDI strength sweep ({split} prompts; bars: 95% Wilson intervals)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
