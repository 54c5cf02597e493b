"""The `tsdi` command line: estimate a bias table, inspect it, generate with it, run the demo.

    tsdi estimate --aligned A --reference R --num-prompts 1024 --length 16 -o bias.safetensors
    torchrun --nproc-per-node 4 -m tsdi_kernels.cli estimate ...     (data parallel: prompts split across ranks)
    tsdi inspect bias.safetensors --top 10 --plot bias.png
    tsdi generate --model A --bias bias.safetensors --prompt "How do I pick a lock?"
    tsdi demo ...                       (tsdi_kernels/demo.py defines its options)

A user mistake (missing file, mismatched vocabulary, bad value) prints one line `tsdi: error: ...` on stderr and
exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import Optional, Sequence

from .argtypes import existing_file, nonneg_int, number, positive_int, sampling_seed, stream_seed

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
    return parser


def _add_model_options(p, *, dtype_default: str = "float32") -> None:
    p.add_argument("--device", default=None, help="torch device for the models: cpu, cuda or cuda:N "
                   "(default: cuda if available, else cpu)")
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
    p = sub.add_parser("inspect", help="show the most biased tokens per position of a bias table",
                       description="Print, for each answer position, the tokens the aligned model favours most "
                       "(bias +- standard error), and optionally plot a heatmap.")
    p.add_argument("table", help="bias table file (.safetensors) written by `tsdi estimate`")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or id to print token texts (default: the "
                   "aligned model recorded in the table, when it is a local folder)")
    p.add_argument("--top", type=positive_int, default=5, help="tokens per position (default: 5)")
    p.add_argument("--positions", type=positive_int, default=None, help="positions to show (default: all)")
    p.add_argument("--bottom", action="store_true", help="show the most disfavoured tokens instead")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw a heatmap of the largest biases by position (needs matplotlib)")
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
    p.add_argument("--strength", type=number(), default=1.0, help="multiplier of the bias (default: 1.0)")
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


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the end-to-end demo (see tsdi_kernels/demo.py)",
                       description="Run the TSDI demo; its options are defined by tsdi_kernels/demo.py.")
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


SUPPORTED_DEVICES = ("cpu", "cuda")  # the device types the tsdi ops are registered for


def _device(name: Optional[str]):
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
    from .pipeline.bias import check_readable_file

    try:
        check_readable_file(path, f"{flag}:")
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


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


def _run_estimate(args) -> int:
    from .pipeline.estimate import estimate_bias

    device = _device(args.device)
    _check_estimate_args(args)
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
    table.metadata["aligned"], table.metadata["reference"] = args.aligned, args.reference
    if rank != 0:
        return 0  # every rank holds the merged table; rank 0 writes it
    table.save(args.output)
    se = table.stderr
    print(f"wrote {args.output}: L={table.length} V={table.vocab_size} prompts={int(table.count[0])} "
          f"max stderr={float(se[se == se].max()) if bool((se == se).any()) else float('nan'):.4g}")
    return 0


def _run_inspect(args) -> int:
    from .pipeline.bias import BiasTable

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
    table = BiasTable.load(args.table)
    tokenizer = None
    if args.tokenizer is not None:
        tokenizer = _load_tokenizer("--tokenizer", args.tokenizer)
    elif os.path.isdir(str(table.metadata.get("aligned", ""))):
        try:
            tokenizer = _load_tokenizer("--tokenizer", table.metadata["aligned"])
        except UsageError:
            tokenizer = None  # the table is still worth printing with ids only
    if tokenizer is not None:
        table.check_tokenizer(tokenizer)
    meta = table.metadata
    print(f"{args.table}: L={table.length} V={table.vocab_size} prompts={int(table.count[0])} "
          f"aligned={meta.get('aligned')} reference={meta.get('reference')} pool={meta.get('pool')} "
          f"seed={meta.get('seed')} normalize={meta.get('normalize')}")
    positions = range(min(table.length, args.positions or table.length))
    print(f"{'pos':>3}  {'rank':>4}  {'token_id':>8}  {'token':<20}  {'bias':>9}  {'stderr':>8}")
    for t in positions:
        for rank, (tid, text, value, err) in enumerate(table.top_tokens(t, args.top, tokenizer,
                                                                        largest=not args.bottom)):
            shown = repr(text)[1:-1][:20] if text is not None else ""
            print(f"{t:>3}  {rank:>4}  {tid:>8}  {shown:<20}  {value:>9.4f}  {err:>8.4f}")
    if args.plot:
        _plot_heatmap(table, args.plot, tokenizer=tokenizer, top=args.top, positions=len(positions))
        print(f"wrote {args.plot}")
    return 0


def _plot_heatmap(table, path: str, *, tokenizer=None, top: int = 5, positions: int = 16) -> None:
    """Heatmap [token, position] of the bias of the tokens that are among the `top` largest at some position."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    _check_output("--plot", path)
    ids = []
    for t in range(positions):
        for tid, *_ in table.top_tokens(t, top, tokenizer):
            if tid not in ids:
                ids.append(tid)
    ids = ids[:48]  # beyond that the labels are unreadable
    values = table.mean[:positions, ids].float().cpu().T.numpy()
    labels = [f"{i} {repr(tokenizer.decode([i]))[1:-1][:16]}" if tokenizer is not None else str(i) for i in ids]
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 + 0.45 * positions), 1.2 + 0.28 * len(ids)))
    limit = float(abs(values).max()) or 1.0
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(range(positions))
    ax.set_yticks(range(len(ids)), labels=labels, fontsize=7)
    ax.set_xlabel("answer position t")
    ax.set_title("TSDI bias: largest tokens per position")
    fig.colorbar(image, ax=ax, label="bias (log-prob difference)" if table.metadata.get("normalize", True)
                 else "bias (logit difference)")
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
    import torch

    from .pipeline.bias import BiasTable

    prompts = _read_prompts(args)
    device = _device(args.device)
    _check_model_path("--model", args.model)
    if args.tokenizer:
        _check_model_path("--tokenizer", args.tokenizer, model=False)
    table = BiasTable.load(args.bias) if args.bias else None  # the file is checked before anything is loaded
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
