"""`tsdi inspect`: the tokens whose bias matters, per answer position, the refusal and compliance openers, and
optionally a heatmap (heatmap.py)."""
from __future__ import annotations

import os

from . import common
from .argtypes import positive_int
from .heatmap import plot_heatmap, token_label


def add_parser(sub) -> None:
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
    p.set_defaults(run=run)


def _inspect_tokenizer(args, table):
    """(tokenizer or None, note): --tokenizer, else the table's recorded tokenizer or aligned model folder."""
    if args.tokenizer is not None:
        return common.load_tokenizer("--tokenizer", args.tokenizer), None
    recorded = [str(table.metadata.get(k, "")) for k in ("tokenizer", "aligned")]
    for folder in recorded:
        if folder and os.path.isdir(folder):
            try:
                return common.load_tokenizer("--tokenizer", folder), None
            except common.UsageError:
                continue  # the table is still worth printing with ids only
    named = ", ".join(repr(r) for r in recorded if r) or "none"
    return None, (f"note: no tokenizer found (the table records {named}, not a folder here): token ids only; "
                  "pass --tokenizer FOLDER_OR_ID to see the tokens")


def run(args) -> int:
    if not os.path.exists(args.table):
        raise common.UsageError(f"table: no such file: {args.table!r}")
    common.check_input_file("table", args.table)
    if args.plot:
        common.check_output("--plot", args.plot)
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise common.UsageError("--plot needs matplotlib (pip install matplotlib)")
    if args.tokenizer is not None:
        common.check_model_path("--tokenizer", args.tokenizer, model=False)
    from ..evaluation.refusal import COMPLY_PROBES, REFUSAL_PROBES, single_token_words
    from ..pipeline.bias import BiasTable

    table = BiasTable.load(args.table)
    tokenizer, note = _inspect_tokenizer(args, table)
    if tokenizer is not None:
        table.check_tokenizer(tokenizer)
    has_logprob = table.aligned_logprob is not None
    by = args.by or ("moved" if has_logprob else "bias")
    if by == "moved" and not has_logprob:
        raise common.UsageError("--by moved: this table has no aligned_logprob (written by an older tsdi_kernels); "
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
            print(f"{t:>3}  {rank:>4}  {row.token_id:>8}  {token_label(row.text, row.token_id)[:20]:<20}  "
                  f"{row.bias:>+9.4f}  {row.stderr:>8.4f}  {row.p_aligned:>9.4f}  {row.p_debiased:>10.4f}")
    words = args.probe if args.probe is not None else [*REFUSAL_PROBES, *COMPLY_PROBES]
    probes = single_token_words(tokenizer, words) if tokenizer else []
    if probes:
        print("openers (bias +- standard error per answer position t):")
        print(f"  {'token':<16}" + "".join(f"{f't={t}':>15}" for t in positions))
        for word, tid in probes:
            cells = [table.token_stats(t, [tid])[0] for t in positions]
            print(f"  {repr(word):<16}" + "".join(f"{f'{c.bias:+.2f}±{c.stderr:.2f}':>15}" for c in cells))
    elif args.probe and tokenizer is not None:
        print("note: none of the --probe words is a single token of this tokenizer")
    if args.plot:
        plot_heatmap(table, args.plot, tokenizer=tokenizer, top=args.top, positions=len(positions), by=by,
                      probes=probes)
        print(f"wrote {args.plot}")
    return 0
