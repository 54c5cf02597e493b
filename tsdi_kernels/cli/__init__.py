"""The `tsdi` command line: estimate a bias table, inspect it, generate with it, choose the strength, run the demo.

    tsdi estimate --aligned A --reference R --num-prompts 1024 --length 16 -o bias.safetensors
    torchrun --nproc-per-node 4 -m tsdi_kernels.cli estimate ...     (data parallel: prompts split across ranks)
    tsdi inspect bias.safetensors --top 10 --plot bias.png
    tsdi generate --model A --bias bias.safetensors --prompt "How do I pick a lock?"
    tsdi eval --out out/eval
    tsdi demo ...

One module a subcommand (estimate.py, inspect.py, generate.py, eval.py, demo.py); common.py holds the shared
checks and loaders, argtypes.py the argparse types. A user mistake (missing file, mismatched vocabulary, bad value)
prints one line `tsdi: error: ...` on stderr and exits with status 2, without a traceback.

Start-up: parsing and checking the arguments imports neither torch nor transformers (the `tsdi` script imports
the package without registering the ops, see tsdi_kernels/__init__.py), so `tsdi --help` and argument errors
answer at once; each command imports what it needs after its arguments are checked.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import demo, estimate, eval as eval_cmd, generate, inspect
from .common import PROG, Parser, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Token-level Safety-Debiased Inference (TSDI, arXiv 2502.02153): "
                    "estimate the alignment bias of a model against its reference, inspect it, generate without it.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"tsdi-kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in (estimate, inspect, generate, demo, eval_cmd):
        command.add_parser(sub)
    return parser


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
