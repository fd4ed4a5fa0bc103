"""runtime.tokenizer.Tokenizer on the real embedded model's converted folder: chat template with tools, special
tokens, eos ids, and streaming detokenisation."""

import json

import pytest

pytestmark = pytest.mark.slow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the corpus for passages.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]
MESSAGES = [{"role": "system", "content": "You are a researcher."}, {"role": "user", "content": "Who wrote Dune?"}]
TEXTS = ["plain ascii text", "héllo wörld — ünïcode", "中文分词 and emoji 🙂👍🏽", "def f(x):\n\treturn x  # tabs\n"]


def test_chat_template_with_tools_renders_qwen_tools_block(embedded_tokenizer):
    prompt = embedded_tokenizer.apply_chat_template(MESSAGES, tools=TOOLS)
    # The template first names the tags in a sentence ("within <tools></tools> XML tags"), then opens the block.
    tools_block = prompt[prompt.index("<tools>\n") : prompt.index("\n</tools>")]
    assert tools_block == "<tools>\n" + json.dumps(TOOLS[0])
    assert "<tool_call>" in prompt and "You are a researcher." in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_without_tools_has_no_tools_block(embedded_tokenizer):
    prompt = embedded_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False)
    assert "<tools>" not in prompt
    assert prompt.endswith("Who wrote Dune?<|im_end|>\n")


def test_reasoning_content_leaves_a_qwen_prompt_unchanged(embedded_tokenizer):
    """heavy's trajectories send reasoning back with their calls (for thinking models); Qwen2.5's template has no
    place for it, so the embedded model's prompts stay exactly as they were."""
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"query": "Dune"}'}}
    turn = {"role": "assistant", "content": "", "tool_calls": [call]}
    tool = {"role": "tool", "tool_call_id": "c1", "content": "Dune is a novel by Frank Herbert."}
    plain = embedded_tokenizer.encode_chat([*MESSAGES, turn, tool], TOOLS)
    thought = {**turn, "reasoning_content": "Search it."}
    assert embedded_tokenizer.encode_chat([*MESSAGES, thought, tool], TOOLS) == plain
    # nor does the form of a call's id (heavy gives its own calls Kimi K2's `functions.NAME:IDX`)
    kimi_id = {**turn, "tool_calls": [{**call, "id": "functions.search:0"}]}
    assert embedded_tokenizer.encode_chat([*MESSAGES, kimi_id, {**tool, "tool_call_id": "functions.search:0"}],
                                          TOOLS) == plain
    assert "Herbert" in embedded_tokenizer.decode(plain)


def test_encode_chat_turns_markers_into_special_ids(embedded_tokenizer):
    ids = embedded_tokenizer.encode_chat(MESSAGES)
    im_start = embedded_tokenizer.encode("<|im_start|>", allow_special=True)
    assert len(im_start) == 1 and ids.count(im_start[0]) == 3  # system, user, generation prompt
    assert embedded_tokenizer.decode(ids) == embedded_tokenizer.apply_chat_template(MESSAGES)


def test_special_text_is_plain_text_unless_allowed(embedded_tokenizer):
    as_text = embedded_tokenizer.encode("<|im_end|>")
    as_special = embedded_tokenizer.encode("<|im_end|>", allow_special=True)
    assert len(as_text) > 1 and len(as_special) == 1
    assert as_special[0] in embedded_tokenizer.eos_ids and embedded_tokenizer.is_special(as_special[0])


def test_eos_ids_include_chat_end_and_document_end(embedded_tokenizer):
    ends = {embedded_tokenizer.encode(t, allow_special=True)[0] for t in ("<|im_end|>", "<|endoftext|>")}
    assert ends <= embedded_tokenizer.eos_ids


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(embedded_tokenizer, text):
    assert embedded_tokenizer.decode(embedded_tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_decoding_equals_decode_and_never_emits_half_characters(embedded_tokenizer, text):
    ids = embedded_tokenizer.encode(text) + embedded_tokenizer.encode("<|im_end|>", allow_special=True)
    decoder = embedded_tokenizer.incremental_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.finish()]
    assert "".join(pieces) == embedded_tokenizer.decode(ids) == text + "<|im_end|>"
    assert all("\ufffd" not in piece for piece in pieces)


def test_incremental_decoding_can_skip_special_tokens(embedded_tokenizer):
    ids = embedded_tokenizer.encode_chat(MESSAGES)
    decoder = embedded_tokenizer.incremental_decoder(skip_special=True)
    streamed = "".join(decoder.push(i) for i in ids) + decoder.finish()
    assert streamed == embedded_tokenizer.decode(ids, skip_special=True)
    assert "<|im_start|>" not in streamed and "Who wrote Dune?" in streamed
