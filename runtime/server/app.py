"""The OpenAI-compatible app: /v1/chat/completions (streaming or not, tools), /v1/completions, /v1/models, /health,
/ready, /metrics (Prometheus).

Bad requests get HTTP 400 with an OpenAI error body; the engine keeps serving everyone else.
"""

import asyncio
import contextlib
import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.engine.async_engine import HANG_TIMEOUT_S, AsyncEngine
from runtime.engine.llm_engine import LLMEngine, RequestError
from runtime.sampling import SamplingParams
from runtime.server import completions as completions_api
from runtime.server.chat import (
    ChoiceState,
    chat_prompt_ids,
    choices_usage,
    completion_id,
    make_parser,
    now,
    prompt_logprobs_body,
    sampling_params,
    tool_plan,
)
from runtime.server.compile_gate import CompileGate
from runtime.server.fanout import choice_params, interleaved, run_all
from runtime.server.forced_calls import calls_before, forced_call
from runtime.server.gate import RequestGate, default_max_body_bytes
from runtime.server.metrics import MeteredEngine
from runtime.server.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from runtime.server.responses import REFUSALS, ServerStatus
from runtime.server.tokenize import add_token_routes
from runtime.structured import StructuredOutputError

OWNER = "heavy"
DONE = "[DONE]"
CLIENT_CLOSED = 499  # nginx's status for a request whose client hung up (nobody reads it; the access log does)

STREAMED = {200: {"content": {"text/event-stream": {}},  # beside the JSON of a whole answer, in /openapi.json
                  "description": "the completion; with `stream`: Server-Sent Events of its chunks, then [DONE]"}}
UNAVAILABLE = {503: {"model": ServerStatus, "description": "unavailable, with the reason"}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":  # its location is a character position, no field
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    return f"{'.'.join(location) or 'body'}: {first.get('msg', 'invalid value')}", location[0] if location else None


async def _until_disconnect(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass


def cancelled_on_disconnect(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A route that stops when its client hangs up before the answer (a client's timeout, the openai SDK retrying),
    as vLLM's `with_cancellation`: the handler is cancelled, and with it its engine requests (aborted, their blocks
    freed: fanout.py), rather than run to max_tokens for nobody. A streamed answer's own disconnect watch takes over
    once the handler returns it. The handler takes the raw request as `raw`."""

    @functools.wraps(handler)
    async def route(*args: Any, **kwargs: Any) -> Any:
        work = asyncio.ensure_future(handler(*args, **kwargs))
        gone = asyncio.ensure_future(_until_disconnect(kwargs["raw"]))
        try:
            await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            work.cancel()  # a no-op once it is done
        await asyncio.wait([work])  # its cancellation run through (its engine requests aborted)
        if work.cancelled():
            return Response(status_code=CLIENT_CLOSED)
        return work.result()

    return route


def create_app(engine: AsyncEngine, model_name: str, api_keys: Sequence[str] = (),
               max_body_bytes: int | None = None, compiles: CompileGate | None = None) -> FastAPI:
    """`api_keys`: one of them is required on every route but the probes and /metrics (none: open);
    `max_body_bytes`: the largest request body taken (default: one prompt at the full context, gate.py);
    `compiles`: the bounds on compiling structured-output specs (default: compile_gate.py's)."""
    compiles = compiles or CompileGate()
    app = FastAPI(title="heavy runtime", description="OpenAI-compatible chat completions over the heavy engine")
    app.add_middleware(RequestGate, api_keys=api_keys,
                       max_body_bytes=max_body_bytes or default_max_body_bytes(engine.engine.max_model_len))
    engine = MeteredEngine(engine, model_name)
    tokenizer = engine.tokenizer

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:  # one the engine refused that no check caught
        return JSONResponse(ApiError(str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _failed(_: Request, exc: Exception) -> JSONResponse:  # still logged with its traceback
        return JSONResponse(ApiError(str(exc), status=500, error_type="server_error").body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body that is no UTF-8, a route or method not served) in the OpenAI error shape,
        as OpenAI answers them, not as {"detail": ...}."""
        message = str(exc.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for bytes that are no UTF-8 JSON
            message = "the body is not valid JSON: it must be UTF-8 text"
        return JSONResponse(ApiError(message, status=exc.status_code).body(), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(ApiError(message, param=param).body(), status_code=400)

    def _status(reason: str | None) -> JSONResponse:
        if reason is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)

    @app.get("/health", response_model=ServerStatus, responses=UNAVAILABLE)
    async def health() -> JSONResponse:
        """Liveness: 503 when only a restart helps (the engine loop died; the router actor is gone)."""
        return _status(await engine.dead())

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        await engine.refresh()
        return Response(generate_latest(engine.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ready", response_model=ServerStatus, responses=UNAVAILABLE)
    async def ready() -> JSONResponse:
        """Readiness: 503 also while nothing can be served for now (no replica up: a rank restarting, which may
        take minutes on a large model and must not restart the server)."""
        return _status(await engine.unavailable())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """`max_model_len` as vLLM reports it: the context a client (heavy's openai backend) sizes its prompts to."""
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": OWNER,
                                            "max_model_len": engine.engine.max_model_len}]}

    def check_model(request: ChatCompletionRequest | CompletionRequest) -> None:
        if request.model is not None and request.model != model_name:  # as OpenAI and vLLM answer a wrong name
            raise ApiError(f"the model {request.model!r} does not exist: this server serves {model_name!r}",
                           status=404, param="model")

    def checked(request: ChatCompletionRequest | CompletionRequest, prompt_ids: list[int]) -> None:
        """The engine's own checks of a prompt, as 400s."""
        try:
            engine.engine.check_request(prompt_ids)
        except RequestError as exc:
            raise ApiError(str(exc), param=request.prompt_param) from exc

    async def compiled(request: ChatCompletionRequest | CompletionRequest, params: SamplingParams) -> None:
        """The engine's check of a structured-output spec (it compiles it, on the gate's threads), as a 400."""
        param = request.structured_param or "tools"  # else: a forced call's grammar
        try:
            await compiles.check(engine.engine.check_structured, params, param)
        except StructuredOutputError as exc:
            raise ApiError(str(exc), param=param) from exc

    @app.post("/v1/completions", responses={**REFUSALS, **STREAMED})
    @cancelled_on_disconnect
    async def completions(request: CompletionRequest, raw: Request):
        check_model(request)

        def params_for(ids: list[int]):
            params = sampling_params(request, len(ids), engine.engine.max_model_len, tokenizer.vocab_size)
            checked(request, ids)
            return params

        choices = await asyncio.to_thread(completions_api.choices_of, request, tokenizer, params_for)
        if choices:  # every prompt's spec is the request's
            await compiled(request, choices[0].params)
        cid, created = completions_api.completion_id(), now()
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return EventSourceResponse(_stream_text(engine, choices, (cid, created, model_name), include_usage))
        await completions_api.complete(engine, choices)
        returned = completions_api.best(choices, request)
        return completions_api.body(cid, created, model_name, [c.entry(c.text) for c in returned],
                                    usage=completions_api.usage(choices))

    @app.post("/v1/chat/completions", responses={**REFUSALS, **STREAMED})
    @cancelled_on_disconnect
    async def chat_completions(request: ChatCompletionRequest, raw: Request):
        check_model(request)
        plan = tool_plan(request)
        prompt_ids = await chat_prompt_ids(request, plan, tokenizer)
        forced = forced_call(plan, tokenizer, calls_before(request.messages))
        written = len(forced.prefix_ids) if forced else 0
        params = sampling_params(request, len(prompt_ids), engine.engine.max_model_len, tokenizer.vocab_size, written)
        if forced:
            prompt_ids = prompt_ids + forced.prefix_ids
            if params.structured is not None:  # the answer is a tool call, not the asked-for format
                raise ApiError("a required tool call cannot go with structured output", param=request.structured_param)
            params = dataclasses.replace(params, structured=forced.grammar)
        await asyncio.to_thread(checked, request, prompt_ids)
        await compiled(request, params)
        unscored = dataclasses.replace(params, prompt_logprobs=None)  # the prompt is scored once, by choice 0
        states = [ChoiceState(j, choice_params(params if j == 0 else unscored, j),
                              parser=make_parser(tokenizer, plan.parse_calls), max_calls=plan.max_calls,
                              calls_finish="stop" if plan.forced_name else "tool_calls") for j in range(request.n)]
        for state in states:
            state.prime(forced.prefix if forced else "")
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return EventSourceResponse(_stream(engine, prompt_ids, states, model_name, include_usage, written))

        async def run(state: ChoiceState):
            async for out in _until_done(engine, prompt_ids, state):
                yield state.feed(out, tokenizer)

        await run_all([run(s) for s in states])
        body = {
            "id": completion_id(), "object": "chat.completion", "created": now(), "model": model_name,
            "choices": [s.final_choice() for s in states], "usage": choices_usage(states, written),
        }
        if request.prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs_body(prompt_ids, states[0].prompt_logprobs, tokenizer)
        return body

    add_token_routes(app, tokenizer, lambda: engine.engine.max_model_len, check_model)
    return app


async def _until_done(engine: MeteredEngine, prompt_ids: list[int], state: ChoiceState):
    """The engine's outputs for one choice until it ends or has all the calls it may have (parallel_tool_calls
    false: its first); then the request is aborted at once, not left to generate calls that would be dropped."""
    async with contextlib.aclosing(engine.generate(prompt_ids, state.params, answered_as=state.stopped_as)) as outputs:
        async for out in outputs:
            yield out
            if state.done:
                return


async def _stream(engine: MeteredEngine, prompt_ids, states: list[ChoiceState], name: str, include_usage: bool,
                  written: int):
    """SSE events of one streamed chat completion, a choice's delta per event; leaving early (client gone) aborts
    the requests."""
    cid, created = completion_id(), now()

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name, "choices": choices}
        return {"data": json.dumps({**body, **extra}, ensure_ascii=False)}

    async def run(state: ChoiceState):
        async for out in _until_done(engine, prompt_ids, state):
            yield state.stream_entry(out, engine.tokenizer)

    for state in states:
        yield chunk([{"index": state.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    try:
        async for entry in interleaved([run(s) for s in states]):
            if entry is not None:
                yield chunk([entry])
    except Exception as exc:  # the stream has started: report in-band, then [DONE], as vLLM does
        yield _stream_error(exc)
    else:
        if include_usage:
            yield chunk([], usage=choices_usage(states, written))
    yield {"data": DONE}


async def _stream_text(engine: AsyncEngine, choices, ids: tuple[str, int, str], include_usage: bool):
    """SSE events of one streamed text completion, a choice's entry per event; leaving early (client gone) aborts
    the requests."""
    try:
        async for entry in completions_api.streamed(engine, choices):
            yield completions_api.chunk(*ids, [entry])
    except Exception as exc:  # the stream has started: report in-band, then [DONE]
        yield _stream_error(exc)
    else:
        if include_usage:
            yield completions_api.chunk(*ids, [], usage=completions_api.usage(choices))
    yield {"data": DONE}


def _stream_error(exc: Exception) -> dict[str, str]:
    return {"data": json.dumps(ApiError(str(exc), status=500, error_type="server_error").body())}


def serve(engine: LLMEngine, model_name: str, host: str, port: int, hang_timeout_s: float = HANG_TIMEOUT_S,
          api_keys: Sequence[str] = (), max_body_bytes: int | None = None, compiles: CompileGate | None = None) -> None:
    import uvicorn

    async_engine = AsyncEngine(engine, hang_timeout_s)
    try:
        app = create_app(async_engine, model_name=model_name, api_keys=api_keys, max_body_bytes=max_body_bytes,
                         compiles=compiles)
        uvicorn.run(app, host=host, port=port, log_level="info", log_config=None)  # its lines through ours: JSON
    finally:
        async_engine.shutdown()
