"""The `tsdi` command line: estimate a bias table, inspect it, generate with it, run the demo.

    tsdi estimate --aligned A --reference R --num-prompts 1024 --length 16 -o bias.safetensors
    torchrun --nproc-per-node 4 -m tsdi_kernels.cli estimate ...     (data parallel: prompts split across ranks)
    tsdi inspect bias.safetensors --top 10 --plot bias.png
    tsdi generate --model A --bias bias.safetensors --prompt "How do I pick a lock?"
    tsdi demo ...                       (tsdi_kernels/demo/run.py defines its options)

A user mistake (missing file, mismatched vocabulary, bad value) prints one line `tsdi: error: ...` on stderr and
exits with status 2, without a traceback.

Start-up: parsing and checking the arguments imports neither torch nor transformers (the `tsdi` script imports
the package without registering the ops, see tsdi_kernels/__init__.py), so `tsdi --help` and argument errors
answer at once; each command imports what it needs after its arguments are checked.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import Optional, Sequence

from .argtypes import (SUPPORTED_DEVICES, device_name, existing_file, nonneg_int, number, positive_int,
                       sampling_seed, stream_seed)

PROG = "tsdi"


class UsageError(Exception):
    """A mistake of the user's: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we print one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- parser ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Token-level Safety-Debiased Inference (TSDI, arXiv 2502.02153): "
                     "estimate the alignment bias of a model against its reference, inspect it, generate without it.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"tsdi-kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_estimate(sub)
    _add_inspect(sub)
    _add_generate(sub)
    _add_demo(sub)
    _add_eval(sub)
    return parser


def _add_model_options(p, *, dtype_default: str = "float32") -> None:
    p.add_argument("--device", type=device_name, default=None, help="torch device for the models: cpu, cuda or "
                   "cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=dtype_default, choices=["float32", "bfloat16", "float16"],
                   help=f"weights dtype (default: {dtype_default})")


def _add_estimate(sub) -> None:
    p = sub.add_parser("estimate", help="estimate a bias table from an aligned model and its reference",
                       description="Average log_softmax(aligned) - log_softmax(reference) over random prompts and "
                       "answer prefixes at the first L answer positions, and save the table (safetensors).")
    p.add_argument("--aligned", required=True, help="aligned model: local folder or Hugging Face id")
    p.add_argument("--reference", required=True, help="reference (pre-alignment) model: local folder or HF id")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or id (default: the aligned model's)")
    p.add_argument("-o", "--output", required=True, help="where to write the bias table (.safetensors)")
    p.add_argument("--num-prompts", type=positive_int, default=1024,
                   help="random prompts to average over; the standard error falls as 1/sqrt(N) (default: 1024)")
    p.add_argument("--length", type=positive_int, default=16,
                   help="L, the number of answer positions the table covers (default: 16)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass (default: 8)")
    p.add_argument("--pool", default="vocab", help="where random prompt tokens come from: 'vocab' (uniform over "
                   "the non-special vocabulary) or a UTF-8 text file whose tokens are drawn (default: vocab)")
    p.add_argument("--prompt-tokens", type=nonneg_int, nargs=2, default=(8, 32), metavar=("MIN", "MAX"),
                   help="range of the random user message length in tokens (default: 8 32)")
    p.add_argument("--seed", type=stream_seed, default=0,
                   help="seed of the prompt stream, an integer in [0, 2**63) (default: 0)")
    p.add_argument("--raw-logits", action="store_true",
                   help="average raw logit differences instead of log-probability differences")
    p.add_argument("--no-chat-template", action="store_true",
                   help="do not wrap prompts in the tokenizer's chat template")
    p.add_argument("--checkpoint", default=None, help="checkpoint file: resumed from if present, written every "
                   "--checkpoint-every batches and on Ctrl-C")
    p.add_argument("--checkpoint-every", type=positive_int, default=16,
                   help="batches between checkpoints (default: 16)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_model_options(p)
    p.set_defaults(run=_run_estimate)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show the tokens whose bias matters, per answer position",
                       description="Print, for each answer position t, the tokens debiasing takes the most "
                       "probability from (the aligned model's over-preferences, e.g. refusal openers; --bottom: the "
                       "tokens it gives the most to), with bias +- standard error and the token's probability "
                       "before and after debiasing at strength 1, then the refusal / compliance openers; optionally "
                       "plot a heatmap. Ranking: p_aligned = softmax of the aligned model's mean log-probabilities "
                       "over the random prompts (recorded by `tsdi estimate`), p_debiased = softmax(that - bias); "
                       "tokens are ranked by |p_debiased - p_aligned|, special tokens skipped. A large bias on a "
                       "token neither model ever emits moves nothing and is not shown. Tables written before "
                       "this ranking existed (no aligned_logprob) are ranked by raw bias.")
    p.add_argument("table", help="bias table file (.safetensors) written by `tsdi estimate` or `tsdi demo`")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hugging Face id, to print token texts "
                   "(default: the tokenizer or aligned model folder recorded in the table, when it exists here)")
    p.add_argument("--top", type=positive_int, default=5, help="tokens per position (default: 5)")
    p.add_argument("--positions", type=positive_int, default=None, help="positions to show (default: all)")
    p.add_argument("--bottom", action="store_true",
                   help="show the tokens debiasing gives the most probability to (by raw bias: most disfavoured)")
    p.add_argument("--by", choices=("moved", "bias"), default=None,
                   help="rank by the probability debiasing moves (default, when the table records it) or by the "
                   "raw bias")
    p.add_argument("--probe", action="append", default=None, metavar="WORD",
                   help="also show this word's bias at every position when it is one token (repeatable; default: "
                   "the demo's refusal and compliance openers, 'Sorry', 'I', 'Sure', 'Here', ...)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw a heatmap (tokens x answer positions, colour = bias, centred at 0) of the ranked "
                   "tokens and the openers, with the share of probability moved per position (needs matplotlib)")
    p.set_defaults(run=_run_inspect)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate with the bias removed",
                       description="Generate answers with the TSDI bias subtracted from the first L steps, using "
                       "the fused debias + sampling op (or HF's generate with a logits processor, --hf).")
    p.add_argument("--model", required=True, help="model to generate with (the aligned model): folder or HF id")
    p.add_argument("--bias", type=existing_file, default=None, help="bias table (.safetensors); without it, "
                   "plain generation")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or id (default: the model's)")
    p.add_argument("--prompt", action="append", default=[], help="a user message (repeat for a batch)")
    p.add_argument("--prompts-file", type=existing_file, default=None, help="a file with one user message a line")
    p.add_argument("--strength", type=number(), default=1.0,
                   help="multiplier of the bias subtracted at the first L steps: 1 removes the estimated bias, "
                   "0 is the plain model, values above 1 over-correct; a NEGATIVE strength adds the bias instead, "
                   "amplifying the aligned model's refusal preference (a probe of what the alignment added, not a "
                   "debiasing setting) (default: 1.0)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="tokens to generate per prompt (default: 64)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")
    p.add_argument("--temperature", type=number(0.0, None, low_open=True), default=1.0,
                   help="sampling temperature, > 0 (default: 1.0; use --greedy for argmax)")
    p.add_argument("--top-k", type=nonneg_int, default=50,
                   help="keep the k most likely tokens; 0 disables (default: 50, as HF)")
    p.add_argument("--top-p", type=number(0.0, 1.0, low_open=True), default=1.0,
                   help="nucleus sampling mass in (0, 1]; 1 disables (default: 1)")
    p.add_argument("--seed", type=sampling_seed, default=0, help="row b samples with seed + b (int64: an integer "
                   "in [-2**63, 2**63), seed + b wraps around) (default: 0)")
    p.add_argument("--hf", action="store_true", help="use model.generate with TSDILogitsProcessor instead of the "
                   "fused sampler")
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    _add_model_options(p)
    p.set_defaults(run=_run_generate)


def _add_eval(sub) -> None:
    from .evaluation import cli as eval_cli

    p = sub.add_parser("eval", help="choose the strength: sweep with 95%% intervals, Pareto plot, recommendation",
                       description="Evaluate reference, aligned and aligned + TSDI over strengths on prompt sets "
                                   "labelled harmful / benign; rates with Wilson intervals, a Pareto plot and a "
                                   "recommended strength (tsdi_kernels/evaluation/).")
    eval_cli.add_arguments(p)
    p.set_defaults(run=eval_cli.run)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the end-to-end demo on SmolLM2-135M-Instruct (writes OUT/models, "
                       "OUT/bias.safetensors)",
                       description="Run the TSDI demo: writes the aligned and reference models as folders "
                       "(OUT/models/{aligned,reference}), the bias table, results.json and trade-off.png. Then: "
                       "tsdi generate --model OUT/models/aligned --bias OUT/bias.safetensors --prompt ...")
    try:
        from .demo import run as demo_mod
    except ImportError as exc:
        # the demo's own options are unknown: main() lets whatever follows through and the run reports the problem
        p.set_defaults(run=_demo_unavailable(exc), accepts_unknown=True)
        return
    demo_mod.add_arguments(p)
    p.set_defaults(run=demo_mod.run)


def _demo_unavailable(exc):
    def run(args) -> int:
        print(f"{PROG}: error: the demo is not available (tsdi_kernels.demo cannot be imported: {exc})",
              file=sys.stderr)
        return 1
    return run


# --- helpers ---------------------------------------------------------------------------------------------------


def _device(name: Optional[str]):
    """The torch device for --device (its syntax was checked by argparse; here: whether it exists)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: not a torch device: {name!r}") from None
    if device.type not in SUPPORTED_DEVICES:
        raise UsageError(f"--device: {name!r} is not supported: use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {name!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    return device


def _is_local_path(path: str) -> bool:
    # a Hugging Face id is "name" or "org/name"; anything else that is not a folder is a missing folder
    return os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1


def _check_model_path(flag: str, path: str, *, model: bool = True) -> None:
    """UsageError unless `path` is a Hugging Face id or a folder that can hold a model (config.json) or, with
    model=False, a tokenizer. Cheap: run before anything is loaded."""
    if not _is_local_path(path):
        return
    if not os.path.exists(path):
        raise UsageError(f"{flag}: no such model folder: {path!r}")
    if not os.path.isdir(path):
        raise UsageError(f"{flag}: {path!r} is not a folder (expected a Hugging Face model folder or id)")
    if model and not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"{flag}: {path!r} is not a Hugging Face model folder (it has no config.json)")


def _load_model(flag: str, path: str, device, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    _check_model_path(flag, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as exc:  # noqa: BLE001  (missing folder, bad config, no network: one line for the user)
        raise UsageError(f"{flag}: cannot load a causal LM from {path!r}: {_one_line(exc)}") from None
    return model.to(device).eval()


def _load_tokenizer(flag: str, path: str):
    from transformers import AutoTokenizer

    _check_model_path(flag, path, model=False)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{flag}: cannot load a tokenizer from {path!r}: {_one_line(exc)}") from None
    return tok


def _one_line(exc: BaseException) -> str:
    """The whole message of `exc` on one line (a multi-line message is joined, never cut)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_output(flag: str, path: str) -> None:
    """UsageError unless a file can be written at `path` (its folder exists, it is not a folder)."""
    from .pipeline.files import check_writable_path

    try:
        check_writable_path(path, flag)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _check_input_file(flag: str, path: str) -> None:
    """UsageError unless `path` is an existing regular file (no torch: runs before anything is imported)."""
    try:
        existing_file(path)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{flag}: {exc}") from None


# --- commands --------------------------------------------------------------------------------------------------


def _init_distributed(device):
    """Under torchrun (WORLD_SIZE > 1), join the process group so that estimate_bias splits the prompts across
    ranks: nccl with one GPU per local rank on CUDA, gloo on CPU. Returns (device, rank)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0
    if not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    return device, dist.get_rank()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _check_estimate_args(args) -> None:
    """Every path and value of `tsdi estimate` that can be checked without a model, before anything is loaded."""
    if args.pool != "vocab":
        if not os.path.exists(args.pool):
            raise UsageError(f"--pool: expected 'vocab' or a text file, no such file: {args.pool!r}")
        _check_input_file("--pool", args.pool)
    lo, hi = args.prompt_tokens
    if lo > hi:
        raise UsageError(f"--prompt-tokens: MIN ({lo}) must not exceed MAX ({hi})")
    _check_output("--output", args.output)
    for flag, path in (("--aligned", args.aligned), ("--reference", args.reference)):
        _check_model_path(flag, path)
    if args.tokenizer:
        _check_model_path("--tokenizer", args.tokenizer, model=False)
    if args.checkpoint is not None:
        _check_output("--checkpoint", args.checkpoint)
        if os.path.abspath(args.checkpoint) == os.path.abspath(args.output):
            raise UsageError("--checkpoint: must differ from --output (the table would overwrite the checkpoint)")
        if os.path.exists(args.checkpoint):
            # the settings that need no model must match now, not after the models are loaded
            from .pipeline.estimate import check_checkpoint_settings, read_checkpoint
            from .pipeline.prompts import describe_pool

            saved, _ = read_checkpoint(args.checkpoint)
            config = {"seed": args.seed, "num_prompts": args.num_prompts, "batch_size": args.batch_size,
                      "length": args.length, "pool": describe_pool(args.pool), "prompt_tokens": [lo, hi],
                      "normalize": not args.raw_logits, "use_chat_template": not args.no_chat_template}
            check_checkpoint_settings(args.checkpoint, saved.metadata, config, keys=tuple(config))


def _recorded(path: str) -> str:
    """A model path as the table records it: an absolute path for a local folder (valid from any working
    folder), a Hugging Face id as it is."""
    return os.path.abspath(path) if os.path.isdir(path) else path


def _run_estimate(args) -> int:
    _check_estimate_args(args)
    device = _device(args.device)
    from .pipeline.estimate import estimate_bias

    device, rank = _init_distributed(device)
    pool = args.pool
    lo, hi = args.prompt_tokens
    tokenizer = _load_tokenizer("--tokenizer" if args.tokenizer else "--aligned", args.tokenizer or args.aligned)
    aligned = _load_model("--aligned", args.aligned, device, args.dtype)
    reference = _load_model("--reference", args.reference, device, args.dtype)
    table = estimate_bias(aligned, reference, tokenizer, num_prompts=args.num_prompts, length=args.length,
                          batch_size=args.batch_size, pool=pool, prompt_tokens=(lo, hi), seed=args.seed,
                          normalize=not args.raw_logits, checkpoint=args.checkpoint,
                          checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                          use_chat_template=not args.no_chat_template)
    # as given (a folder or a Hugging Face id): `tsdi inspect` loads the tokenizer from it when it is a folder
    table.metadata["aligned"], table.metadata["reference"] = _recorded(args.aligned), _recorded(args.reference)
    if args.tokenizer:
        table.metadata["tokenizer"] = _recorded(args.tokenizer)
    if rank != 0:
        return 0  # every rank holds the merged table; rank 0 writes it
    table.save(args.output)
    se = table.stderr
    print(f"wrote {args.output}: L={table.length} V={table.vocab_size} prompts={int(table.count[0])} "
          f"max stderr={float(se[se == se].max()) if bool((se == se).any()) else float('nan'):.4g}")
    return 0


def _inspect_tokenizer(args, table):
    """(tokenizer or None, note): --tokenizer, else the table's recorded tokenizer or aligned model folder."""
    if args.tokenizer is not None:
        return _load_tokenizer("--tokenizer", args.tokenizer), None
    recorded = [str(table.metadata.get(k, "")) for k in ("tokenizer", "aligned")]
    for folder in recorded:
        if folder and os.path.isdir(folder):
            try:
                return _load_tokenizer("--tokenizer", folder), None
            except UsageError:
                continue  # the table is still worth printing with ids only
    named = ", ".join(repr(r) for r in recorded if r) or "none"
    return None, (f"note: no tokenizer found (the table records {named}, not a folder here): token ids only; "
                  "pass --tokenizer FOLDER_OR_ID to see the tokens")


def _default_probes() -> list:
    try:
        from .demo.run import COMPLY_PROBES, REFUSAL_PROBES
    except ImportError:
        return []
    return [*REFUSAL_PROBES, *COMPLY_PROBES]


def _probes(tokenizer, words) -> list:
    """(word, id) of the probe words that are one token of `tokenizer` (others cannot be shown per token)."""
    out = []
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and (word, ids[0]) not in out:
            out.append((word, ids[0]))
    return out


def _token_label(text, token_id: int) -> str:
    """The token's text quoted (a leading space shows: ' I' vs 'I'), or its id without a tokenizer."""
    return repr(text) if text is not None else f"#{token_id}"


def _run_inspect(args) -> int:
    if not os.path.exists(args.table):
        raise UsageError(f"table: no such file: {args.table!r}")
    _check_input_file("table", args.table)
    if args.plot:
        _check_output("--plot", args.plot)
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib (pip install matplotlib)")
    if args.tokenizer is not None:
        _check_model_path("--tokenizer", args.tokenizer, model=False)
    from .pipeline.bias import BiasTable

    table = BiasTable.load(args.table)
    tokenizer, note = _inspect_tokenizer(args, table)
    if tokenizer is not None:
        table.check_tokenizer(tokenizer)
    has_logprob = table.aligned_logprob is not None
    by = args.by or ("moved" if has_logprob else "bias")
    if by == "moved" and not has_logprob:
        raise UsageError("--by moved: this table has no aligned_logprob (written by an older tsdi_kernels); "
                         "re-estimate it, or use --by bias")
    meta = table.metadata
    print(f"{args.table}: L={table.length} V={table.vocab_size} prompts={int(table.count[0])} "
          f"aligned={meta.get('aligned')} reference={meta.get('reference')} pool={meta.get('pool')} "
          f"seed={meta.get('seed')} normalize={meta.get('normalize')}")
    if note:
        print(note)
    if by == "moved":
        print(f"ranked by the probability debiasing at strength 1 {'gives to' if args.bottom else 'takes from'} "
              "each token (p: the aligned model's mean distribution over the random prompts, before -> after "
              "debiasing); special tokens skipped")
    else:
        print(f"ranked by raw bias ({'most disfavoured' if args.bottom else 'most favoured'})"
              + ("" if has_logprob else "; the table has no aligned_logprob, so rare tokens neither model emits "
                 "can top this list (re-estimate for the ranking by probability moved)"))
    positions = range(min(table.length, args.positions or table.length))
    print(f"{'pos':>3}  {'rank':>4}  {'token_id':>8}  {'token':<20}  {'bias':>9}  {'stderr':>8}  "
          f"{'p_aligned':>9}  {'p_debiased':>10}")
    for t in positions:
        if by == "moved":
            print(f"pos {t}: strength 1 moves {table.total_variation(t):.1%} of the probability")
        rows = table.ranked_tokens(t, args.top, tokenizer, by=by, largest=not args.bottom)
        for rank, row in enumerate(rows):
            print(f"{t:>3}  {rank:>4}  {row.token_id:>8}  {_token_label(row.text, row.token_id)[:20]:<20}  "
                  f"{row.bias:>+9.4f}  {row.stderr:>8.4f}  {row.p_aligned:>9.4f}  {row.p_debiased:>10.4f}")
    probes = _probes(tokenizer, args.probe if args.probe is not None else _default_probes()) if tokenizer else []
    if probes:
        print("openers (bias +- standard error per answer position t):")
        print(f"  {'token':<16}" + "".join(f"{f't={t}':>15}" for t in positions))
        for word, tid in probes:
            cells = [table.token_stats(t, [tid])[0] for t in positions]
            print(f"  {repr(word):<16}" + "".join(f"{f'{c.bias:+.2f}±{c.stderr:.2f}':>15}" for c in cells))
    elif args.probe and tokenizer is not None:
        print("note: none of the --probe words is a single token of this tokenizer")
    if args.plot:
        _plot_heatmap(table, args.plot, tokenizer=tokenizer, top=args.top, positions=len(positions), by=by,
                      probes=probes)
        print(f"wrote {args.plot}")
    return 0


def _plot_heatmap(table, path: str, *, tokenizer=None, top: int = 5, positions: int = 16, by: str = "moved",
                  probes=()) -> None:
    """Heatmap [token, answer position] of the bias (diverging colours centred at 0, labelled colour bar) of the
    tokens that rank in the `top` at some position (both directions), then the probe words; above it, the share
    of the probability debiasing moves at each position for a few strengths (when the table records it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.colors import CenteredNorm
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    _check_output("--plot", path)
    ids, seen = [], set()
    for largest in (True, False):  # taken from (over-preferred), then given to
        for t in range(positions):
            for row in table.ranked_tokens(t, top, tokenizer, by=by, largest=largest):
                if row.token_id not in seen and len(ids) < 40:  # beyond that the labels are unreadable
                    seen.add(row.token_id)
                    ids.append(row.token_id)
    ranked = len(ids)
    probe_ids = [tid for _, tid in probes if tid not in seen]
    ids += probe_ids
    values = table.mean[:positions, ids].float().cpu().T.numpy()
    # token text quoted (spaces show), then its id
    labels = [f"{_token_label(tokenizer.decode([i]), i)[:20]}  #{i}" if tokenizer is not None else f"#{i}"
              for i in ids]
    moved = by == "moved" and table.aligned_logprob is not None
    height = 1.6 + 0.3 * len(ids) + (1.6 if moved else 0.0)
    fig = plt.figure(figsize=(max(6.5, 3.0 + 0.75 * positions), height))
    grid = fig.add_gridspec(2 if moved else 1, 2, width_ratios=(40, 1),
                            height_ratios=((1.6, 0.3 * len(ids) + 1.0) if moved else None))
    ax = fig.add_subplot(grid[-1, 0])
    cax = fig.add_subplot(grid[-1, 1])
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", norm=CenteredNorm(vcenter=0.0),
                      interpolation="nearest")
    if len(ids) * positions <= 800:  # the value in every cell, when they fit
        limit = float(abs(values).max()) or 1.0
        for r in range(len(ids)):
            for c in range(positions):
                v = values[r, c]
                ax.text(c, r, f"{v:+.1f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * limit else "black")
    if probe_ids:
        ax.axhline(ranked - 0.5, color="black", linewidth=1.2)
    ax.set_xticks(range(positions))
    ax.set_yticks(range(len(ids)), labels=labels, fontsize=8, family="monospace")
    ax.set_xlabel("answer position t")
    ax.set_ylabel("token" + (" (below the line: refusal / compliance openers)" if probe_ids else ""))
    kind = "log-prob" if table.normalize else "logit"
    what = ("tokens debiasing takes the most probability from, then gives the most to" if by == "moved"
            else "tokens with the largest |bias|")
    ax.set_title(f"TSDI bias: {what}", fontsize=10)
    fig.colorbar(image, cax=cax, label=f"bias = mean {kind} difference, aligned - reference\n"
                 "(red: the aligned model prefers it; debiasing lowers it)")
    if moved:
        top_ax = fig.add_subplot(grid[0, 0], sharex=ax)
        for strength in (0.5, 1.0, 1.5):
            top_ax.plot(range(positions), [100 * table.total_variation(t, strength) for t in range(positions)],
                        marker="o", label=f"strength {strength:g}")
        top_ax.set_ylabel("probability\nmoved (%)")
        top_ax.set_ylim(bottom=0)
        top_ax.grid(alpha=0.3)
        top_ax.legend(fontsize=7, loc="upper right")
        top_ax.tick_params(labelbottom=False)
        top_ax.set_title("share of the aligned model's mean distribution that debiasing moves, per position",
                         fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_prompts(args) -> list:
    prompts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise UsageError("give at least one --prompt or a --prompts-file")
    return prompts


def _run_generate(args) -> int:
    prompts = _read_prompts(args)
    _check_model_path("--model", args.model)
    if args.tokenizer:
        _check_model_path("--tokenizer", args.tokenizer, model=False)
    device = _device(args.device)
    import torch

    from .pipeline.bias import BiasTable

    if args.strength < 0:
        print(f"{PROG}: note: --strength {args.strength:g} < 0 adds the bias (amplifies the refusal preference)",
              file=sys.stderr)
    table = BiasTable.load(args.bias) if args.bias else None  # the file is checked before any model is loaded
    tokenizer = _load_tokenizer("--tokenizer" if args.tokenizer else "--model", args.tokenizer or args.model)
    if table is not None:
        table.check_tokenizer(tokenizer)
    model = _load_model("--model", args.model, device, args.dtype)
    from .integrations.hf import TSDILogitsProcessor, encode_prompts, generate  # transformers: after the checks

    tokenizer.padding_side = "left"  # the answer position t must be the same for every row
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = encode_prompts(tokenizer, prompts, chat_template=not args.no_chat_template)
    enc = {k: v.to(device) for k, v in enc.items()}
    prompt_length = enc["input_ids"].shape[1]
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, pad_token_id=tokenizer.pad_token_id)
    if not args.greedy:
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.hf:
        torch.manual_seed(args.seed)
        processors = [TSDILogitsProcessor(table, prompt_length, args.strength)] if table is not None else []
        out = model.generate(**enc, **kwargs, logits_processor=processors)
    else:
        out = generate(model, table.to(device) if table is not None else None, strength=args.strength,
                       seed=args.seed, **enc, **kwargs)
    for prompt, row in zip(prompts, out[:, prompt_length:]):
        print(f"### {prompt}\n{tokenizer.decode(row, skip_special_tokens=True)}")
    return 0


# --- entry point -----------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "accepts_unknown", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, NotImplementedError) as exc:
        # user-facing: bad values and files (missing, a folder, unreadable, disk full), the whole message on a line
        text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
        print(f"{PROG}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
