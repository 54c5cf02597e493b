"""`tsdi estimate`: the bias table of an aligned model against its reference, on one process or data parallel
under torchrun (prompts split across ranks)."""
from __future__ import annotations

import atexit
import os

from . import common
from .argtypes import nonneg_int, positive_int, stream_seed


def add_parser(sub) -> None:
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
    common.add_model_options(p)
    p.set_defaults(run=run)


def init_distributed(device):
    """Under torchrun (WORLD_SIZE > 1), join the process group so that estimate_bias splits the prompts across
    ranks: nccl with one GPU per local rank on CUDA, gloo on CPU. Returns (device, rank)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0
    if not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.setcommon.device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    return device, dist.get_rank()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check_args(args) -> None:
    """Every path and value of `tsdi estimate` that can be checked without a model, before anything is loaded."""
    if args.pool != "vocab":
        if not os.path.exists(args.pool):
            raise common.UsageError(f"--pool: expected 'vocab' or a text file, no such file: {args.pool!r}")
        common.check_input_file("--pool", args.pool)
    lo, hi = args.prompt_tokens
    if lo > hi:
        raise common.UsageError(f"--prompt-tokens: MIN ({lo}) must not exceed MAX ({hi})")
    common.check_output("--output", args.output)
    for flag, path in (("--aligned", args.aligned), ("--reference", args.reference)):
        common.check_model_path(flag, path)
    if args.tokenizer:
        common.check_model_path("--tokenizer", args.tokenizer, model=False)
    if args.checkpoint is not None:
        common.check_output("--checkpoint", args.checkpoint)
        if os.path.abspath(args.checkpoint) == os.path.abspath(args.output):
            raise common.UsageError("--checkpoint: must differ from --output (the table would overwrite the checkpoint)")
        if os.path.exists(args.checkpoint):
            # the settings that need no model must match now, not after the models are loaded
            from ..pipeline.estimate import check_checkpoint_settings, read_checkpoint
            from ..pipeline.prompts import describe_pool

            saved, _ = read_checkpoint(args.checkpoint)
            config = {"seed": args.seed, "num_prompts": args.num_prompts, "batch_size": args.batch_size,
                      "length": args.length, "pool": describe_pool(args.pool), "prompt_tokens": [lo, hi],
                      "normalize": not args.raw_logits, "use_chat_template": not args.no_chat_template}
            check_checkpoint_settings(args.checkpoint, saved.metadata, config, keys=tuple(config))


def _recorded(path: str) -> str:
    """A model path as the table records it: an absolute path for a local folder (valid from any working
    folder), a Hugging Face id as it is."""
    return os.path.abspath(path) if os.path.isdir(path) else path


def run(args) -> int:
    check_args(args)
    device = common.device(args.device)
    from ..pipeline.estimate import estimate_bias

    device, rank = init_distributed(device)
    pool = args.pool
    lo, hi = args.prompt_tokens
    tokenizer = common.load_tokenizer("--tokenizer" if args.tokenizer else "--aligned", args.tokenizer or args.aligned)
    aligned = common.load_model("--aligned", args.aligned, device, args.dtype)
    reference = common.load_model("--reference", args.reference, device, args.dtype)
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
