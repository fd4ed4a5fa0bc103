"""What several scripts share: a free port on loopback, a percentile of measured values, and the model a benchmark
runs (--model, --threads)."""

from __future__ import annotations

import argparse
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The value at rank q (0..1) of the sorted values, the nearest rank at or above it; nan for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from runtime.embedded import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model name or checkpoint folder")
    parser.add_argument("--threads", type=int, default=2)


def load_model_and_tokenizer(args: argparse.Namespace):
    """(model in the dtype `auto` picks, tokenizer) of --model, torch on --threads threads. Imported here: the
    scripts that only need a port do not load torch."""
    import torch

    from runtime.embedded import resolve_model
    from runtime.engine.factory import load_tokenizer
    from runtime.models.registry import load_model

    torch.set_num_threads(args.threads)
    folder = resolve_model(args.model)
    return load_model(folder, "auto"), load_tokenizer(folder)
