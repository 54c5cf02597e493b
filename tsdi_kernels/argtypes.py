"""argparse types shared by the `tsdi` subcommands: each rejects a bad value with one line naming the problem
(argparse adds the option's name)."""
from __future__ import annotations

import argparse
import os
from typing import Optional


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def number(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False):
    """A float in [low, high] (or (low, high] with low_open); NaN is refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or (low is not None and (value < low or (low_open and value == low))) or (
                high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {text!r}")
        return value
    return parse


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def number_list(text: str) -> list[float]:
    """Comma-separated non-negative numbers, e.g. strengths "0.5,1,1.5"."""
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 or v != v for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more non-negative numbers, got {text!r}")
    return values
