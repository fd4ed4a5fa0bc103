"""Per-token cost of a request's stop strings, stop token ids and logit_bias, before and after s46 (side by side in
one run): stop strings held back by comparing every end of the text with every stop (O(#stops x L^2) a token) vs
KMP states advanced over the new characters; the stop-token frozenset and the bias tensors rebuilt every token vs
built once per request.

    PYTHONPATH=. .venv/bin/python scripts/bench_stop_matching.py   # without PYTHONPATH: the venv's runtime
"""

import random
import statistics
import time

import torch

import runtime
from runtime.engine.detokenizer import StopStringText
from runtime.sampling import SamplingParams

CHARS_PER_TOKEN = 4
TOKENS = 400
VOCAB = 151_936  # Qwen2.5's


class QuadraticStopText(StopStringText):
    """The rule before s46: search the new text for whole stops, then try every end of the text against every stop."""

    def _extend(self, new_text: str) -> None:
        if not new_text or self.stopped:
            return
        search_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += new_text
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _stop_prefix_len(self) -> int:
        for n in range(min(self._longest_stop - 1, len(self.text)), 0, -1):
            if any(stop.startswith(self.text[-n:]) for stop in self._stop):
                return n
        return 0


class Chunks:
    def __init__(self, chunks: list[str]):
        self.chunks = chunks

    def push(self, token_id: int) -> str:
        return self.chunks[token_id]

    def finish(self) -> str:
        return ""


def us_per_token(kind: type[StopStringText], text: str, stop: tuple[str, ...]) -> tuple[float, str]:
    chunks = [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
    out, streamed = kind(Chunks(chunks), stop), []
    start = time.perf_counter()
    for i in range(len(chunks)):
        out.add(i)
        streamed.append(out.delta(final=out.stopped))
        if out.stopped:
            break
    return (time.perf_counter() - start) / len(streamed) * 1e6, "".join(streamed)


def bench_stop_strings() -> None:
    rng = random.Random(0)
    prose = "".join(rng.choices("abcdefghij klmnop", k=TOKENS * CHARS_PER_TOKEN))
    cases = {
        "1 stop of 2 chars, prose": (prose, ("\n\n",)),
        "4 stops of 8 chars, prose": (prose, tuple("".join(rng.choices("abcdefghij", k=8)) for _ in range(4))),
        "16 x 256 chars (the cap), prose": (prose, tuple("".join(rng.choices("abcdefghij ", k=256))
                                                          for _ in range(16))),
        "16 x 256 chars, 'a'*255+'b' over 'a's": ("a" * TOKENS * CHARS_PER_TOKEN, ("a" * 255 + "b",) * 16),
    }
    print(f"stop strings, µs a token ({CHARS_PER_TOKEN} chars), median of 5 runs of {TOKENS} tokens")
    print(f"{'case':42} {'every end (old)':>16} {'KMP (new)':>10} {'speed-up':>9}")
    for name, (text, stop) in cases.items():
        runs = [(us_per_token(QuadraticStopText, text, stop), us_per_token(StopStringText, text, stop))
                for _ in range(5)]
        assert all(old[1] == new[1] for old, new in runs), name  # the same deltas
        old = statistics.median(o[0] for o, _ in runs)
        new = statistics.median(n[0] for _, n in runs)
        print(f"{name:42} {old:16.1f} {new:10.1f} {old / new:8.1f}x")


def _us(run, repeats: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1e6


def bench_per_request_sets() -> None:
    eos = frozenset({151643, 151645})
    params = SamplingParams(stop_token_ids=tuple(range(256)),
                            logit_bias=tuple((t, 1.0) for t in range(0, VOCAB, VOCAB // 1024)))
    row = torch.randn(VOCAB)
    stop_tokens = eos | frozenset(params.stop_token_ids)

    def bias_rebuilt():
        ids, biases = zip(*params.logit_bias, strict=True)
        row[list(ids)] += torch.tensor(biases, dtype=row.dtype, device=row.device)

    def bias_cached():
        ids, biases = params.logit_bias_tensors
        row[ids.to(row.device)] += biases.to(row.device, row.dtype)

    print("\nper token, µs (256 stop ids, 1024 logit_bias entries: the caps)")
    print(f"{'what':42} {'rebuilt (old)':>16} {'cached (new)':>12}")
    rebuilt = _us(lambda: 5 in eos | frozenset(params.stop_token_ids)) * 2  # twice a token
    cached = _us(lambda: 5 in stop_tokens) * 2
    print(f"{'stop-token set, 2 look-ups':42} {rebuilt:16.1f} {cached:12.2f}")
    print(f"{'logit_bias added to a row':42} {_us(bias_rebuilt, 500):16.1f} {_us(bias_cached, 500):12.1f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"runtime imported from {runtime.__file__}")
    bench_stop_strings()
    bench_per_request_sets()
