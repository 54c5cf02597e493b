"""`tsdi generate`: answers with the bias removed, by the fused sampler (or HF's generate and a logits processor)."""
from __future__ import annotations

import sys

from . import common
from .argtypes import existing_file, nonneg_int, number, positive_int, sampling_seed


def add_parser(sub) -> None:
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
    common.add_model_options(p)
    p.set_defaults(run=run)


def read_prompts(args) -> list:
    prompts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise common.UsageError("give at least one --prompt or a --prompts-file")
    return prompts


def run(args) -> int:
    prompts = read_prompts(args)
    common.check_model_path("--model", args.model)
    if args.tokenizer:
        common.check_model_path("--tokenizer", args.tokenizer, model=False)
    device = common.device(args.device)
    import torch

    from ..pipeline.bias import BiasTable

    if args.strength < 0:
        print(f"{common.PROG}: note: --strength {args.strength:g} < 0 adds the bias (amplifies the refusal preference)",
              file=sys.stderr)
    table = BiasTable.load(args.bias) if args.bias else None  # the file is checked before any model is loaded
    tokenizer = common.load_tokenizer("--tokenizer" if args.tokenizer else "--model", args.tokenizer or args.model)
    if table is not None:
        table.check_tokenizer(tokenizer)
    model = common.load_model("--model", args.model, device, args.dtype)
    from ..integrations.hf import TSDILogitsProcessor, encode_prompts, generate  # transformers: after the checks

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
