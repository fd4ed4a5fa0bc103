"""`POST /tokenize` and `POST /detokenize`, as vLLM serves them: a client counts a prompt's tokens against the
context (`max_model_len`) before sending it, or reads back what ids mean, with the server's own tokenizer and chat
template."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from runtime.server.chat import chat_prompt_ids, tool_plan
from runtime.server.protocol import DetokenizeRequest, TokenizeRequest, token_ids_in_vocabulary
from runtime.server.responses import REFUSALS


def add_token_routes(app: FastAPI, tokenizer, max_model_len: Callable[[], int],
                     check_model: Callable[[Any], None]) -> None:
    @app.post("/tokenize", responses=REFUSALS)
    async def tokenize(request: TokenizeRequest) -> dict[str, Any]:
        check_model(request)
        chat = request.chat()
        if chat is None:
            ids = await asyncio.to_thread(tokenizer.encode, request.prompt)
        else:  # what the chat route would send the engine (its generation prompt included)
            ids = await chat_prompt_ids(chat, tool_plan(chat), tokenizer)
        return {"count": len(ids), "max_model_len": max_model_len(), "tokens": ids}

    @app.post("/detokenize", responses=REFUSALS)
    async def detokenize(request: DetokenizeRequest) -> dict[str, str]:
        check_model(request)
        return {"prompt": tokenizer.decode(token_ids_in_vocabulary(request.tokens, tokenizer.vocab_size, "tokens"))}
