"""Typed, ranged argument parsers shared by the subcommands."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A float >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def unit_float(text: str) -> float:
    """A float in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def slice_range(text: str) -> slice:
    """``a:b`` (either end may be empty) as a slice."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected a:b, got {text!r}")
    try:
        start, stop = (int(p) if p else None for p in parts)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers a:b, got {text!r}") from err
    return slice(start, stop)
