"""argparse types shared by the `tsdi` subcommands: each rejects a bad value with one line naming the problem
(argparse adds the option's name). No torch here: `tsdi --help` and argument errors must not pay for it."""
from __future__ import annotations

import argparse
import math
import os
import re
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
    """A finite float in [low, high] (or (low, high] with low_open; None: unbounded); NaN and inf are refused."""
    if low is None:
        bounds = f"(-inf, {high}]" if high is not None else ""
    else:
        bounds = f"{'(' if low_open else '['}{low}, {f'{high}]' if high is not None else 'inf)'}"
    expected = "expected a finite number" + (f" in {bounds}" if bounds else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low))) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value
    return parse


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def int_range(low: int, high: int, what: str = "an integer"):
    """An integer in [low, high] (both inclusive), e.g. a seed that must fit an int64."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} in [{low}, {high}], got {text!r}")
        return value
    return parse


# Seeds: sampling seeds are int64 (the ops take an int64 seed per row; row b uses seed + b, wrapping around in
# int64); the prompt stream of an estimate is a function of seed mod 2**63, so estimate seeds are in [0, 2**63).
sampling_seed = int_range(INT64_MIN, INT64_MAX, "an integer seed")
stream_seed = int_range(0, INT64_MAX, "an integer seed")


def existing_file(text: str) -> str:
    """A path to an existing regular file (a folder or a FIFO is named as such, not as missing)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular file")
    return text


def number_list(text: str) -> list[float]:
    """Comma-separated non-negative numbers, e.g. strengths "0.5,1,1.5"."""
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more finite non-negative numbers, got {text!r}")
    return values


def flat_numbers(groups) -> list[float]:
    """The values of a repeatable number_list option, in order: `--strengths 0.5 1` and `--strengths 0.5,1` both
    give [0.5, 1.0]; None (not given) gives []."""
    return [v for group in (groups or []) for v in (group if isinstance(group, list) else [group])]


SUPPORTED_DEVICES = ("cpu", "cuda")  # the device types the tsdi ops are registered for


def device_name(text: str) -> str:
    """cpu, cuda or cuda:N (checked without torch; whether CUDA and device N exist is checked when the command
    runs)."""
    value = text.strip()
    match = re.fullmatch(r"([A-Za-z_]+)(?::(\d+))?", value)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}")
    if match.group(1) not in SUPPORTED_DEVICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not supported: use cpu, cuda or cuda:N")
    return value
