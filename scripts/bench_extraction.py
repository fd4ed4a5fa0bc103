"""What moving page extraction into a killable child process costs a page, side by side in one run.

`thread`: html_to_markdown on a thread of a pool, as open_page ran it before; `child`: the same call through
heavy.tools.child_pool (the page pickled to a long-lived child, the extracted page pickled back). Pages are built from
HotpotQA paragraphs inside a typical article's navigation, sidebar and footer, at several sizes up to the fetch
cap (2 MB). Each page is extracted --repeats times each way, the two ways interleaved; the medians are printed with
their ratio, and the time a new child takes to start (what the call after a killed one pays once).

    .venv/bin/python scripts/bench_extraction.py --repeats 9

On the two shared cores of the audit machine (load about 8): 25 KB 4.4 ms in a thread, 4.8 ms in the child; 200 KB
106 vs 114 ms; 2 MB 762 vs 871 ms (a run before, with less load: 0.91 and 0.94 of the thread's time); a new child
985 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from heavy.tools.blocking import run_in
from heavy.tools.child_pool import ChildPool
from heavy.tools.extract import html_to_markdown

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hotpotqa-dev49.jsonl"
PAGE_BYTES = (20_000, 200_000, 2_000_000)
SECTIONS = "".join(f"<li><a href='/section/{k}'>Section {k}</a></li>" for k in range(60))
RELATED = "".join(f"<li><a href='/related/{k}'>Related article {k}</a></li>" for k in range(30))
BOILERPLATE = f"<nav><ul>{SECTIONS}</ul></nav><aside><h3>Related</h3><ul>{RELATED}</ul></aside>"
FOOTER = "<footer><p>Copyright. All rights reserved.</p>" + "<a href='/about'>About</a> " * 20 + "</footer>"


def paragraphs(path: Path) -> list[tuple[str, str]]:
    found = []
    for line in path.read_text().splitlines():
        for title, sentences in json.loads(line)["context"]:
            found.append((title, "".join(sentences)))
    return found


def page(size: int, texts: list[tuple[str, str]]) -> str:
    """An article of about `size` bytes: headed paragraphs between navigation and a footer."""
    parts, length, k = [], 0, 0
    while length < size:
        title, text = texts[k % len(texts)]
        part = f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>"
        parts.append(part)
        length += len(part)
        k += 1
    body = "".join(parts)
    return (f"<html><head><title>{html.escape(texts[0][0])}</title></head><body>{BOILERPLATE}"
            f"<main><article><h1>{html.escape(texts[0][0])}</h1>{body}</article></main>{FOOTER}</body></html>")


async def timed(call) -> float:
    start = time.perf_counter()
    await call
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    texts = paragraphs(args.data)
    threads, children = ThreadPoolExecutor(max_workers=1), ChildPool(size=1, name="bench-extract")
    start = time.perf_counter()
    await children.run(html_to_markdown, "<html><body><p>warm up</p></body></html>", None)
    startup = time.perf_counter() - start
    print(f"a new child, first call included: {startup * 1000:.0f} ms")
    print(f"{'page':>10} {'thread ms':>10} {'child ms':>10} {'ratio':>6} {'overhead ms':>12}")
    for size in PAGE_BYTES:
        document = page(size, texts)
        await run_in(threads, html_to_markdown, document, "http://bench/page")  # warm caches both ways
        await children.run(html_to_markdown, document, "http://bench/page")
        in_thread, in_child = [], []
        for _ in range(args.repeats):
            in_thread.append(await timed(run_in(threads, html_to_markdown, document, "http://bench/page")))
            in_child.append(await timed(children.run(html_to_markdown, document, "http://bench/page")))
        thread_ms, child_ms = statistics.median(in_thread) * 1000, statistics.median(in_child) * 1000
        print(f"{len(document):>10} {thread_ms:>10.1f} {child_ms:>10.1f} {child_ms / thread_ms:>6.3f} "
              f"{child_ms - thread_ms:>12.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=9)
    asyncio.run(main(parser.parse_args()))
