"""Tokenizer of a converted Hugging Face style folder (the embedded Qwen2 models): transformers' fast tokenizer,
the model's own chat template (with tool declarations), end-of-sequence ids and streaming detokenisation.

Only byte-level BPE vocabularies (GPT-2 style, as Qwen2 uses) are supported, because streaming decodes token bytes.
"""

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from runtime.tokenizers.kimi import IncrementalDecoder

BYTE_LEVEL_DECODER = "ByteLevel"


class TokenizerError(ValueError):
    """The folder holds no usable tokenizer, or an id is outside the vocabulary."""


# fill-in-the-middle markers, (prefix, suffix, middle): the text before the gap, after it, then the gap is written
FIM_QWEN = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
FIM_STARCODER = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")

def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of byte-level BPE: printable Latin-1 bytes stand for themselves, every other byte for
    U+0100 onwards in byte order (so token strings never contain whitespace or control characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    byte_to_char = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in byte_to_char)
    byte_to_char |= {b: chr(256 + n) for n, b in enumerate(shifted)}
    return {char: b for b, char in byte_to_char.items()}


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list | tuple) else {int(value)}


class Tokenizer:
    """encode/decode, chat rendering from the model's template, `eos_ids`, and `incremental_decoder()`."""

    def __init__(self, hf_tokenizer: Any, eos_ids: Iterable[int]):
        decoder = getattr(hf_tokenizer.backend_tokenizer, "decoder", None)
        if type(decoder).__name__ != BYTE_LEVEL_DECODER:
            raise TokenizerError(f"only byte-level BPE tokenizers are supported, this one decodes with {decoder!r}")
        if not hf_tokenizer.chat_template:
            raise TokenizerError("the tokenizer has no chat template")
        self._hf = hf_tokenizer
        self._alphabet = _byte_level_alphabet()
        self._added = {i: token.content for i, token in hf_tokenizer.added_tokens_decoder.items()}
        self._special_ids = frozenset(i for i, token in hf_tokenizer.added_tokens_decoder.items() if token.special)
        self.vocab_size = len(hf_tokenizer)
        self.eos_ids = frozenset(eos_ids)
        if not self.eos_ids:
            raise TokenizerError("no end-of-sequence token id is known")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Tokenizer":
        """Read tokenizer files, and eos ids from generation_config.json, config.json and the tokenizer."""
        from transformers import AutoTokenizer  # heavy import, deferred to first use

        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            raise TokenizerError(f"{directory} has no tokenizer.json")
        hf_tokenizer = AutoTokenizer.from_pretrained(str(directory))
        eos = _ids(hf_tokenizer.eos_token_id)
        for name in ("generation_config.json", "config.json"):
            if (directory / name).is_file():
                eos |= _ids(json.loads((directory / name).read_text()).get("eos_token_id"))
        return cls(hf_tokenizer, eos)

    @functools.cached_property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle markers (prefix, suffix, middle) of a code model that has them (Qwen2.5-Coder,
        StarCoder spellings), else None."""
        ids = {content: i for i, content in self._added.items()}
        for names in (FIM_QWEN, FIM_STARCODER):
            if all(name in ids for name in names):
                return tuple(ids[name] for name in names)
        return None

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token text (`<|im_end|>`) becomes one id only with `allow_special`."""
        return self._hf(text, add_special_tokens=False, split_special_tokens=not allow_special)["input_ids"]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        return bytes(self._alphabet[char] for char in self._hf.convert_ids_to_tokens(token_id))

    def incremental_decoder(self, *, skip_special: bool = False) -> IncrementalDecoder:
        """Streaming: `push(id) -> new text`, holding back a character split across tokens; `finish()`."""
        return IncrementalDecoder(self, skip_special=skip_special)

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text the model was trained on; `tools` are JSON-schema tool declarations."""
        return self._hf.apply_chat_template(
            list(messages), tools=list(tools) if tools else None, add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        return self.encode(self.apply_chat_template(messages, tools, add_generation_prompt), allow_special=True)
