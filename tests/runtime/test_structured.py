"""Structured output: a random tiny model held to a grammar writes only what the grammar allows (sampled, several
seeds, through the engine and through the server, streamed or not), without changing the other rows of its batch;
the real tokenizer's bytes reach xgrammar right (a leading space, special tokens); bad specs are 400s naming the
field."""

import json
import re

import httpx
import pytest
import torch

from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.async_engine import AsyncEngine
from runtime.models.qwen2 import Qwen2ForCausalLM
from runtime.sampling import SamplingParams, StructuredOutput
from runtime.structured import Grammars, StructuredOutputError, allowed_tokens
from tests.runtime.test_server import CONTEXT, TINY, USER, CharTokenizer, running_server

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}},
          "required": ["ok", "colour"]}
REGEX = r"[a-c]{2}-\d{3}"
CHOICES = ["alpha", "beta", "gamma"]


def valid(kind: str, text: str) -> bool:
    if kind == "json":
        value = json.loads(text)
        return set(value) == {"ok", "colour"} and isinstance(value["ok"], bool) and value["colour"] in ("red", "green")
    if kind == "regex":
        return re.fullmatch(REGEX, text) is not None
    return text in CHOICES


SPECS = {"json": StructuredOutput("json", json.dumps(SCHEMA)), "regex": StructuredOutput("regex", REGEX),
         "choice": StructuredOutput("choice", json.dumps(CHOICES))}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(TINY).eval()


def tiny_engine(model) -> LLMEngine:
    config = EngineConfig(block_size=4, num_blocks=CONTEXT // 4 * 4, max_model_len=CONTEXT, max_num_seqs=8,
                          max_num_batched_tokens=128, speculative_tokens=3)
    return LLMEngine(model, CharTokenizer(), config)


def test_a_random_model_held_to_a_grammar_writes_only_what_it_allows_and_the_batch_is_unchanged(tiny_model):
    prompt = CharTokenizer().encode("user:write it;")
    free = SamplingParams(temperature=1.0, seed=5, max_tokens=12)
    alone = tiny_engine(tiny_model).generate([prompt], free)[0]
    for seed in range(4):
        kinds = list(SPECS)
        params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=80, structured=SPECS[k]) for k in kinds]
        outputs = tiny_engine(tiny_model).generate([prompt] * 4, [*params, free])
        for kind, output in zip(kinds, outputs, strict=False):
            assert output.finish_reason == "stop" and valid(kind, output.text), (kind, seed, output.text)
        assert outputs[-1].token_ids == alone.token_ids  # a masked row leaves its neighbours alone
    unconstrained = tiny_engine(tiny_model).generate([prompt], SamplingParams(temperature=1.0, seed=0, max_tokens=20))
    assert not valid("regex", unconstrained[0].text)  # the model alone writes no such thing


def test_the_real_tokenizers_bytes_reach_the_grammar(embedded_tokenizer):
    tokenizer = embedded_tokenizer
    grammars = Grammars(tokenizer, lambda: 151_936)  # the model's logits are wider than the vocab
    matcher = grammars.matcher(StructuredOutput("regex", "say hi"))
    say, space_hi = tokenizer.encode("say"), tokenizer.encode(" hi")
    assert len(say) == len(space_hi) == 1  # " hi" is one byte-level token, its space included
    allowed = allowed_tokens([matcher], 151_936)[0]  # [V]
    assert allowed[say[0]] and not allowed[space_hi[0]] and not allowed[sorted(tokenizer.eos_ids)[0]]
    assert matcher.accept_token(say[0])
    allowed = allowed_tokens([matcher], 151_936)[0]
    im_start = tokenizer.encode("<|im_start|>", allow_special=True)[0]
    assert allowed[space_hi[0]] and not allowed[im_start] and not allowed[151_900]  # no special or padding rows
    assert matcher.accept_token(space_hi[0])
    allowed = allowed_tokens([matcher], 151_936)[0]
    assert set(allowed.nonzero()[:, 0].tolist()) == set(tokenizer.eos_ids)  # complete: only the end may follow


@pytest.mark.parametrize("spec, message", [
    (StructuredOutput("regex", "(unclosed"), "regex"),
    (StructuredOutput("json", "{not json"), "json"),
    (StructuredOutput("grammar", "root ::= undefined_rule"), "grammar"),
])
def test_a_spec_that_does_not_compile_is_an_error_naming_its_kind(spec, message):
    with pytest.raises(StructuredOutputError, match=rf"structured output \({message}\): \S"):
        Grammars(CharTokenizer(), lambda: TINY.vocab_size).matcher(spec)


def test_the_compiled_specs_kept_are_bounded_however_many_distinct_ones_clients_send():
    cache_bytes = 100_000  # a few compiled schemas of this vocabulary (each ~14 kB)
    grammars = Grammars(CharTokenizer(), lambda: TINY.vocab_size, cache_bytes=cache_bytes)
    for i in range(60):
        schema = {"type": "object", "properties": {f"field_{i}": {"type": "string"}}, "required": [f"field_{i}"]}
        grammars.matcher(StructuredOutput("json", json.dumps(schema)))
    (compiler,) = grammars._compilers.values()
    assert 0 < compiler.get_cache_size_bytes() <= cache_bytes
    assert grammars.matcher(SPECS["json"]) is not None  # one dropped from the cache is compiled again


@pytest.fixture(scope="module")
def server(tiny_model):
    with running_server(AsyncEngine(tiny_engine(tiny_model)), "tiny") as url:
        yield url


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_holds_chat_and_text_completions_to_the_asked_format(server, stream):
    formats = {"json": {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}},
               "regex": {"guided_regex": REGEX}, "choice": {"guided_choice": CHOICES}}
    for kind, field in formats.items():
        for route, body in (("chat/completions", {"messages": USER}), ("completions", {"prompt": "write it"})):
            texts = [_text(server, route, {**body, **field, "temperature": 1.0, "seed": seed, "max_tokens": 80},
                           stream) for seed in range(2)]
            assert all(valid(kind, text) for text in texts), (kind, route, texts)
    # any JSON object: a random model's free strings rarely close within a test's budget; each starts as one
    starts = [_text(server, "chat/completions", {"messages": USER, "response_format": {"type": "json_object"},
                                                "temperature": 1.0, "seed": seed, "max_tokens": 4}, stream)
              for seed in range(3)]
    assert all(re.match(r'\s*\{\s*("|\})', text) for text in starts), starts


def _text(server: str, route: str, body: dict, stream: bool) -> str:
    key = "message" if route == "chat/completions" else None
    if not stream:
        choice = httpx.post(f"{server}/v1/{route}", json={"model": "tiny", **body}, timeout=60).json()["choices"][0]
        return choice[key]["content"] if key else choice["text"]
    text = ""
    with httpx.stream("POST", f"{server}/v1/{route}", json={"model": "tiny", **body, "stream": True},
                      timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += (choice["delta"].get("content") or "") if key else choice["text"]
    return text


@pytest.mark.parametrize("body, param", [
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_grammar": "root ::= nothing_here"}, "guided_grammar"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ({"guided_choice": []}, "guided_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos"),
    ({"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": "required"}, "response_format"),
])
def test_bad_structured_requests_are_400s_naming_the_field(server, body, param):
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": "tiny", "messages": USER, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"], error


def test_a_grammar_no_token_can_continue_ends_the_output_instead_of_failing_the_batch():
    matcher = Grammars(CharTokenizer(), lambda: TINY.vocab_size).matcher(StructuredOutput("regex", "a\nb"))
    assert matcher.accept_token(CharTokenizer().encode("a")[0])  # no token of this vocabulary is a newline
    allowed = allowed_tokens([matcher, None], TINY.vocab_size)  # [2, V]
    assert allowed[0].nonzero()[:, 0].tolist() == [0] and allowed[1].all()  # EOS only; the free row untouched


@pytest.mark.slow
def test_drafts_checked_through_the_grammar_change_no_greedy_structured_answer(embedded_model_fp32, embedded_tokenizer):
    # an extraction copies the record's values: prompt-lookup drafts, each row masked as of the drafts before it
    record = "Record: name Ada Lovelace; born 10 December 1815 in London, England; known for the Analytical Engine."
    prompt = embedded_tokenizer.encode_chat([{"role": "user", "content": record + " Return it as JSON."}])
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "born", "place", "known_for"],
              "properties": {"name": {"type": "string"}, "born": {"type": "string"}, "place": {"type": "string"},
                             "known_for": {"type": "string"}}}
    params = SamplingParams(temperature=0.0, max_tokens=80, structured=StructuredOutput("json", json.dumps(schema)))

    def run(speculative_tokens: int) -> tuple:
        engine = LLMEngine(embedded_model_fp32, embedded_tokenizer,
                           EngineConfig(kv_cache_bytes=64 << 20, speculative_tokens=speculative_tokens))
        return engine.generate([prompt], params)[0], engine.speculation

    (plain, _), (speculated, speculation) = run(0), run(3)
    assert speculated.token_ids == plain.token_ids and speculated.finish_reason == "stop"
    assert json.loads(speculated.text)["name"] == "Ada Lovelace"
    # 9 of its 47 tokens came as drafts when written (the copied values)
    assert speculation.accepted >= len(speculated.token_ids) // 6, (speculation, len(speculated.token_ids))
