"""Test doubles for orchestration tests: a scripted LLM backend and in-memory search/open_page tools.

The scripted backend is a test double only (never a default path): each request is answered by a script
function that sees the trajectory index, the step and the messages, and may sleep to play a slow model.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from heavy.llm.ratelimit import RateLimiter
from heavy.llm.types import Completion, Message, Meter, Sampling, ToolCall, Usage
from heavy.tools.base import Source, ToolContext, ToolResult

STEP_USAGE = Usage(prompt_tokens=100, completion_tokens=10)


@dataclass
class Request:
    messages: list[Message]
    tools: list[dict] | None
    sampling: Sampling
    max_tokens: int
    request_id: str
    prefix_key: str | None

    @property
    def trajectory(self) -> int:
        """Trajectory index from the request id `job:k:step`; -1 for aggregator requests."""
        parts = self.request_id.split(":")
        return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1  # not "shorten:read:0"

    @property
    def forced(self) -> bool:
        return self.tools is None and self.trajectory >= 0


def call(name: str, **arguments) -> Completion:
    return Completion(content="", tool_calls=(ToolCall(id=f"c_{name}", name=name, arguments=arguments),),
                      finish_reason="tool_calls", usage=STEP_USAGE)


def text(content: str, usage: Usage = STEP_USAGE) -> Completion:
    return Completion(content=content, usage=usage)


def thinking(script: Callable[[Request], Completion], cost: int) -> Callable[[Request], Completion]:
    """A thinking model: `cost` tokens of reasoning before every reply. A request whose max_tokens leaves no room
    after them is cut inside its reasoning (no content, finish_reason "length"), as a real server's would be."""
    def think(request: Request) -> Completion:
        if request.max_tokens <= cost:
            return Completion(content="", reasoning="Let me think. " * 3, finish_reason="length",
                              usage=Usage(prompt_tokens=100, completion_tokens=request.max_tokens))
        reply = script(request)
        return replace(reply, reasoning="Let me think.", usage=replace(reply.usage, completion_tokens=cost + 5))
    return think


class CountingLimiter(RateLimiter):
    """A rate limiter that counts the slots held right now."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{"requests_per_s": 1000.0, "max_concurrency": 4, **kwargs})
        self.held = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with super().slot():
            self.held += 1
            try:
                yield
            finally:
                self.held -= 1


@dataclass
class ScriptedBackend:
    script: Callable[[Request], Completion]
    delay_s: Callable[[Request], float] = lambda request: 0.0
    name: str = "scripted"
    requests: list[Request] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when given, every call waits until the test opens it
    aggregator_gate: asyncio.Event | None = None  # the same for the aggregator's calls only (trajectory -1)
    # what a request has spent while it waits, as its meter shows it (Usage(): counted nothing, as a non-streamed
    # OpenAI request)
    in_flight: Callable[[Request], Usage] = lambda request: Usage()

    async def chat(self, messages, tools, sampling, *, max_tokens, stop=None, request_id=None, prefix_key=None,
                   meter: Meter | None = None):
        request = Request(list(messages), tools, sampling, max_tokens, request_id or "", prefix_key)
        self.requests.append(request)
        if meter is not None:
            meter.sent, meter.usage = True, self.in_flight(request)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.aggregator_gate is not None and request.trajectory < 0:
                await self.aggregator_gate.wait()
            await asyncio.sleep(self.delay_s(request))
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        return self.script(request)

    def stream(self, *args, **kwargs):
        raise NotImplementedError("the agent loop uses chat()")

    async def aclose(self) -> None:
        return None


def source(url: str, text_: str) -> Source:
    return Source(url=url, title=url.rsplit("/", 1)[-1], fetched_at=time.time(),
                  content_hash=hashlib.sha256(text_.encode()).hexdigest(), snippet=text_[:200])


class DictSearch:
    """`search` over a dict url → text: every page whose text shares a word with the query."""

    name = "search"
    description = "Search the corpus."
    parameters = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"],
                  "additionalProperties": False}

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages
        self.queries: list[str] = []

    async def run(self, args: dict, ctx: ToolContext) -> ToolResult:
        self.queries.append(args["query"])
        words = set(args["query"].lower().split())
        hits = [(url, t) for url, t in self.pages.items() if words & set(t.lower().split())]
        body = "\n".join(f"{url}: {t}" for url, t in hits) or "no results"
        return ToolResult(text=body, sources=tuple(source(url, t) for url, t in hits))


class Echo:
    """A second tool, to check allow-lists."""

    name = "python"
    description = "Echo code."
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}

    async def run(self, args: dict, ctx: ToolContext) -> ToolResult:
        return ToolResult(text=args["code"])


class DictOpen:
    """`open_page` over the same dict: the whole text of one page."""

    name = "open_page"
    description = "Open a page."
    parameters = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages

    async def run(self, args: dict, ctx: ToolContext) -> ToolResult:
        page = self.pages[args["url"]]
        return ToolResult(text=f"# {args['url']}\n\n{page}", sources=(source(args["url"], page),))
