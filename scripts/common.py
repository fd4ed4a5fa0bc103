"""What several scripts share: a free port on loopback, a percentile of measured values, the model a benchmark
runs (--model, --threads), the soaks' growth table and their wait for the service they started."""

from __future__ import annotations

import argparse
import asyncio
import socket

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until_up(client: httpx.AsyncClient, path: str, tries: int, pause_s: float) -> None:
    """Until `path` answers 200 (a service still starting refuses connections), at most `tries` times."""
    for _ in range(tries):
        try:
            if (await client.get(path)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(pause_s)


def percentile(values: list[float], q: float) -> float:
    """The value at rank q (0..1) of the sorted values, the nearest rank at or above it; nan for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


WARM_UP = 0.1  # of a soak's run: its slopes start after it


def print_slopes(samples: list[tuple[int, dict[str, float]]], unit: str = "jobs") -> None:
    """Each figure's growth per 1,000 `unit` over the first and the second half of `samples` ((done, figures) as the
    run went), after the warm-up, beside its last value: a leak is a slope in both halves, warm-up in the first."""
    start = next(i for i, (done, _) in enumerate(samples) if done >= WARM_UP * samples[-1][0])
    middle = start + (len(samples) - 1 - start) // 2
    (j0, a), (j1, b), (j2, c) = samples[start], samples[middle], samples[-1]
    print(f"\ngrowth per 1,000 {unit}: first half ({unit} {j0}-{j1}) | second half ({unit} {j1}-{j2}) | at end")
    for name in c:
        first = (b.get(name, 0) - a.get(name, 0)) / max(1, j1 - j0) * 1000
        second = (c[name] - b.get(name, 0)) / max(1, j2 - j1) * 1000
        print(f"  {name:32s} {first:+10.1f} | {second:+10.1f} | {c[name]:10.1f}")


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
