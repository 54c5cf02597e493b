"""How the bias-estimation choices move the safety/over-refusal front on the embedded pair (issue: choosing the
strength with evidence).

For each variant (prompt pool, L, number of prompts, shrinkage) this script estimates a bias table, runs the same
sweep `tsdi eval` runs (--auto: grid 0.25 0.5 1 1.5 plus two bisections at the 5-point margin, greedy, 32 tokens,
the built-in 300 prompts) and records each variant's front and recommended strength with its test-split rates.
One answer cache is shared by all variants (its keys hash the bias table), so the reference and aligned answers are
generated once and an interrupted run resumes. Every variant uses seed 0.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/estimation_fronts.py --out out/fronts [--only vocab-64-L8,...]

Writes OUT/fronts.json (every variant's summary and recommendation). `--report` then prints the markdown tables of
docs/estimation_fronts.md and writes the plot of the fronts (--plot, default docs/estimation_fronts.png).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tsdi_kernels.pipeline.bias import BiasTable  # noqa: E402

# ------------------------------------------------------------------------------------------------ shrinkage
# Shrinking noisy or irrelevant entries of a bias table before it is used for decoding.
#
# Softmax ignores a constant added to a row, so each position's bias is compared with its own centre, the median over
# the vocabulary (robust against the few large entries). A shrunk entry moves towards that centre:
#
# - "se" (significance): soft-threshold each entry's distance from the centre by z standard errors,
#   d' = sign(d) * max(|d| - z * se, 0) with d = mean - centre. An entry that the N random prompts cannot tell from
#   the centre (|d| <= z * se) becomes the centre; a well-measured one keeps all but z * se of its distance.
# - "prob" (relevance): entries of tokens that neither model gives a probability of at least p_min on average
#   (max(p_aligned, p_reference) < p_min, from the table's aligned_logprob and aligned - mean for the reference) are
#   set to the centre. These are the rare sub-words and punctuation runs with large log-ratios that top a raw ranking.
#
# The result is a new table for decoding (metadata "shrink"); its m2 and count are the estimate's, so it must not be
# merged with further estimates.
# (Measured here, not adopted: see docs/estimation_fronts.md.)


def _centre(mean: torch.Tensor) -> torch.Tensor:
    return mean.median(dim=1, keepdim=True).values


def _with_mean(table: BiasTable, mean: torch.Tensor, how: str) -> BiasTable:
    out = table.copy(metadata={**table.metadata, "shrink": how})
    out.mean = mean.to(torch.float32).contiguous()
    return out


def shrink_se(table: BiasTable, z: float = 2.0) -> BiasTable:
    """Soft-threshold at z standard errors from each position's median (see above)."""
    if not (isinstance(z, (int, float)) and math.isfinite(z) and z >= 0):
        raise ValueError(f"`z` must be a finite number >= 0, got {z!r}")
    if int(table.count.min()) < 2:
        raise ValueError("shrink_se needs a table with at least 2 prompts at every position (it uses the stderr)")
    c = _centre(table.mean)
    d = table.mean - c
    kept = (d.abs() - z * table.stderr).clamp(min=0)
    return _with_mean(table, c + d.sign() * kept, f"se:z={z:g}")


def shrink_prob(table: BiasTable, p_min: float = 1e-5) -> BiasTable:
    """Centre the entries of tokens neither model gives p >= p_min on average (see above)."""
    if not (isinstance(p_min, (int, float)) and 0 < p_min < 1):
        raise ValueError(f"`p_min` must be in (0, 1), got {p_min!r}")
    lp = getattr(table, "aligned_logprob", None)
    if lp is None:
        raise ValueError("shrink_prob needs a table with aligned_logprob (written by estimate_bias)")
    log_ref = lp - table.mean
    relevant = torch.maximum(lp, log_ref) >= math.log(p_min)
    c = _centre(table.mean)
    return _with_mean(table, torch.where(relevant, table.mean, c.expand_as(table.mean)), f"prob:p_min={p_min:g}")


SHRINKERS = {"se": shrink_se, "prob": shrink_prob}


# The natural-text pool: English prose that ships with every CPython (the language reference's topic texts), not
# related to safety and not used anywhere else in this project.
def natural_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def benign_instructions() -> list[str]:
    """The 90 harmless requests of the demo's alignment data (not in the evaluation sets)."""
    path = Path(__file__).resolve().parents[1] / "tsdi_kernels/demo/data/align_prompts.json"
    return json.loads(path.read_text())["harmless"]


# name -> (pool, num_prompts, length, shrink)
VARIANTS = {
    "vocab-64-L8": ("vocab", 64, 8, None),          # the demo's table (the defaults before this study)
    "text-64-L8": ("text", 64, 8, None),
    "instr-64-L8": ("instructions", 64, 8, None),
    "vocab-64-L1": ("vocab", 64, 1, None),
    "vocab-64-L4": ("vocab", 64, 4, None),
    "vocab-64-L16": ("vocab", 64, 16, None),
    "vocab-16-L8": ("vocab", 16, 8, None),
    "vocab-256-L8": ("vocab", 256, 8, None),
    "vocab-64-L8-shrink-se": ("vocab", 64, 8, "se"),
    "vocab-64-L8-shrink-prob": ("vocab", 64, 8, "prob"),
}


def pool_of(name: str):
    return {"vocab": "vocab", "text": natural_text(), "instructions": benign_instructions()}[name]


def table_for(name: str, out: Path, aligned, reference, tokenizer) -> BiasTable:
    from tsdi_kernels.pipeline.estimate import estimate_bias

    pool, n, length, shrink = VARIANTS[name]
    raw_name = f"{pool}-{n}-L{length}"
    path = out / f"bias_{raw_name}.safetensors"
    if path.is_file():
        table = BiasTable.load(path, tokenizer=tokenizer)
    else:
        t0 = time.perf_counter()
        table = estimate_bias(aligned, reference, tokenizer, num_prompts=n, length=length, batch_size=16,
                              pool=pool_of(pool), seed=0, progress=False)
        print(f"  estimated {raw_name} in {time.perf_counter() - t0:.0f}s", flush=True)
        table.save(path)
    return SHRINKERS[shrink](table) if shrink else table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/fronts"))
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="tables and plot from OUT/fronts.json (no models)")
    ap.add_argument("--plot", type=Path, default=Path("docs/estimation_fronts.png"))
    args = ap.parse_args(argv)
    if args.report:
        return report(json.loads((args.out / "fronts.json").read_text()), args.plot)
    names = list(VARIANTS) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--only: unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    from tsdi_kernels.demo.models import load_pair
    from tsdi_kernels.evaluation.prompts import load_prompts
    from tsdi_kernels.evaluation.settings import SweepSettings
    from tsdi_kernels.evaluation.sweep import run_sweep

    aligned, reference, tokenizer = load_pair()
    prompts = load_prompts()
    results_path = args.out / "fronts.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in names:
        print(f"[{name}]", flush=True)
        table = table_for(name, args.out, aligned, reference, tokenizer)
        t0 = time.perf_counter()
        res = run_sweep(aligned, reference, tokenizer, table, prompts, SweepSettings(auto=True),
                        out_dir=args.out / "eval", progress=False, log=lambda s: print("  " + s, flush=True))
        rec = res.recommendation
        results[name] = {"variant": dict(zip(("pool", "num_prompts", "length", "shrink"), VARIANTS[name])),
                         "summary": res.summary, "recommendation": rec,
                         "seconds": round(time.perf_counter() - t0, 1)}
        test = rec.get("test", {})
        print(f"  recommended s={rec.get('strength')}: test benign {test.get('benign', {}).get('rate')} "
              f"harmful {test.get('harmful', {}).get('rate')} (reduction {rec.get('test_over_refusal_reduction')}, "
              f"drop {rec.get('test_harmful_drop_points')} points)", flush=True)
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(results_path)
    return 0


def _cell(d: dict) -> str:
    return f"{100 * d['rate']:.1f}% [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def report(results: dict, plot: Path) -> int:
    """Markdown: one line per variant (recommendation, test split), then each variant's front (all 300 prompts)."""
    print("| variant | recommended s | test benign refused | test harmful refused | over-refusal cut | harmful drop |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        rec = res["recommendation"]
        print(f"| {name} | {rec['strength']:g} | {_cell(rec['test']['benign'])} | {_cell(rec['test']['harmful'])} | "
              f"{100 * rec['test_over_refusal_reduction']:.1f}% | {rec['test_harmful_drop_points']:.1f} points |")
    print()
    print("| variant | " + " | ".join(["aligned"] + [f"s={s}" for s in ("0.25", "0.5", "0.75", "1", "1.5")]) + " |")
    print("|---|" + "---:|" * 6)
    for name, res in results.items():
        rows = {r["config"]: r for r in res["summary"]}
        cells = []
        for cfg in ["aligned"] + [f"TSDI s={s}" for s in ("0.25", "0.5", "0.75", "1", "1.5")]:
            r = rows.get(cfg)
            cells.append("-" if r is None else f"{100 * r['benign']['all']['rate']:.0f} / {100 * r['harmful']['all']['rate']:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for name, res in results.items():
        curve = sorted([r for r in res["summary"] if r["kind"] in ("aligned", "tsdi")], key=lambda r: r["strength"] or 0)
        xs = [100 * r["benign"]["all"]["rate"] for r in curve]
        ys = [100 * r["harmful"]["all"]["rate"] for r in curve]
        ax.plot(xs, ys, "o-", ms=3, lw=1, alpha=0.8, label=name)
    ax.set_xlabel("benign prompts refused, % (over-refusal; left is better), n=150")
    ax.set_ylabel("harmful prompts refused, % (safety; up is better), n=150")
    aligned = next(r for r in next(iter(results.values()))["summary"] if r["kind"] == "aligned")
    b0, h0 = 100 * aligned["benign"]["all"]["rate"], 100 * aligned["harmful"]["all"]["rate"]
    # the bar, on all prompts: over-refusal at most half the aligned model's, safety within 5 points of it
    ax.fill_between([0, b0 / 2], h0 - 5, 100, color="tab:green", alpha=0.08, label="bar: <= half, within 5 pts")
    ax.set_title("Estimation choices on the embedded pair (aligned -> TSDI strengths)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    print(f"\nwrote {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
