"""What structured output costs and what prompt-lookup drafts win back: decode tokens/s of JSON-schema extraction
requests against the same requests unconstrained, and with speculative drafts checked through the grammar, side by
side in one run, at batch 1 and batch 8, on the embedded model.

The unconstrained run is given each request's structured completion length (ignore_eos), so both decode the same
batch shapes step by step; that ratio is the grammar's cost alone (xgrammar's mask per row, its unpacking to [B, V],
the masked fill), speculation off in both. The third run speculates (drafts copied from the record in the prompt,
each draft row masked as of the drafts before it). Also printed: the mask's own time per step, and whether every
structured output parsed with the schema's keys.

    python scripts/bench_structured.py [--model NAME_OR_PATH] [--threads 2]
"""

import argparse
import json
import time

from common import add_model_arguments, load_model_and_tokenizer  # beside this script

from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.config import SPECULATIVE_TOKENS
from runtime.sampling import SamplingParams, StructuredOutput
from runtime.structured import allowed_tokens

RECORDS = [("Ada Lovelace", "10 December 1815", "London", "the Analytical Engine notes"),
           ("Alan Turing", "23 June 1912", "London", "the Turing machine"),
           ("Grace Hopper", "9 December 1906", "New York City", "the first compiler"),
           ("Edsger Dijkstra", "11 May 1930", "Rotterdam", "the shortest-path algorithm"),
           ("Barbara Liskov", "7 November 1939", "Los Angeles", "the substitution principle"),
           ("Donald Knuth", "10 January 1938", "Milwaukee", "The Art of Computer Programming"),
           ("Margaret Hamilton", "17 August 1936", "Paoli", "the Apollo flight software"),
           ("Dennis Ritchie", "9 September 1941", "Bronxville", "the C programming language")]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "born", "place", "known_for"],
          "properties": {"name": {"type": "string"}, "born": {"type": "string"}, "place": {"type": "string"},
                         "known_for": {"type": "string"}}}
MAX_TOKENS = 96


def decode(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> tuple[list, float, int]:
    """Run the requests together; (completions, decode seconds, decode tokens), prefill excluded."""
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    seqs = {i: engine.requests[i].seq for i in ids}
    texts = {i: "" for i in ids}

    def step() -> None:
        for out in engine.step():
            texts[out.request_id] += out.new_text

    while any(s.num_completion_tokens == 0 for s in seqs.values()):
        step()
    before = sum(s.num_completion_tokens for s in seqs.values())
    start = time.perf_counter()
    while engine.has_unfinished():
        step()
    elapsed = time.perf_counter() - start
    tokens = sum(s.num_completion_tokens for s in seqs.values()) - before
    return [(texts[i], seqs[i].num_completion_tokens) for i in ids], elapsed, tokens


def well_formed(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return set(value) == set(SCHEMA["required"])


def mask_ms(engine: LLMEngine, rows: int, repeats: int = 20) -> float:
    """Milliseconds to build the allowed-token mask of `rows` constrained rows at the start of a JSON object."""
    spec = SamplingParams(structured=StructuredOutput("json", json.dumps(SCHEMA)))
    matchers = [engine.check_structured(spec) for _ in range(rows)]
    vocab = engine.runner.model.config.vocab_size
    start = time.perf_counter()
    for _ in range(repeats):
        allowed_tokens(matchers, vocab)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args)
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=256 << 20, speculative_tokens=0))
    drafting = LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=256 << 20,
                                                        speculative_tokens=SPECULATIVE_TOKENS))
    prompts = [tokenizer.encode_chat([{"role": "user", "content": f"Record: name {name}; born {born} in {place}; "
                                                                  f"known for {known}. Return it as JSON."}])
               for name, born, place, known in RECORDS]
    structured = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                structured=StructuredOutput("json", json.dumps(SCHEMA)))
    for warm in (engine, drafting):  # the grammar compiler reads the vocabulary once
        decode(warm, prompts[:1], [structured])
    print(f"{'batch':>5}  {'structured tok/s':>16}  {'plain tok/s':>11}  {'ratio':>5}  {'with drafts':>11}  "
          f"{'ratio':>5}  {'mask ms/step':>12}  valid")
    for batch in (1, 8):
        outputs, seconds, tokens = decode(engine, prompts[:batch], [structured] * batch)
        plain = [SamplingParams(temperature=0.0, max_tokens=length, ignore_eos=True) for _, length in outputs]
        _, plain_seconds, plain_tokens = decode(engine, prompts[:batch], plain)
        drafted, drafted_seconds, drafted_tokens = decode(drafting, prompts[:batch], [structured] * batch)
        ours, theirs, speculated = tokens / seconds, plain_tokens / plain_seconds, drafted_tokens / drafted_seconds
        valid = sum(well_formed(text) for text, _ in outputs + drafted)
        print(f"{batch:>5}  {ours:>16.1f}  {theirs:>11.1f}  {ours / theirs:>5.2f}  {speculated:>11.1f}  "
              f"{speculated / ours:>5.2f}  {mask_ms(engine, batch):>12.2f}  {valid}/{2 * batch}")
    print("e.g.", outputs[0][0])


if __name__ == "__main__":
    main()
