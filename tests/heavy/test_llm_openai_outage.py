"""The openai backend against a loopback server that answers, goes away (a restart) and comes back."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.retry import RetryPolicy
from heavy.llm.types import LLMError, Sampling

pytestmark = pytest.mark.anyio

REPLY = json.dumps({"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "back"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
# a few quick retries, as the defaults' 4 in about 7 s are, against the minutes a server takes to restart
POLICY = RetryPolicy(max_retries=2, backoff_s=0.001, backoff_max_s=0.01, outage_s=600.0)


class RestartingServer:
    """Answers until `down()`; then drops `drops` connections unanswered, as a server going away does (or, with
    `status`, answers them with that error), and answers again. Counted by the server, so that no test waits on a
    clock."""

    def __init__(self) -> None:
        self.drops = 0
        self.dropped = 0
        self.status: int | None = None
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                if state.dropped < state.drops:
                    state.dropped += 1
                    if state.status is not None:
                        self.send_error(state.status)
                        return
                    self.close_connection = True  # no response: "Server disconnected without sending a response"
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(REPLY)))
                self.end_headers()
                self.wfile.write(REPLY)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self, drops: int, status: int | None = None) -> None:
        self.drops, self.dropped, self.status = drops, 0, status


@pytest.fixture
def server():
    server = RestartingServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def chat(llm: OpenAIBackend) -> str:
    completion = await llm.chat([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=8)
    return completion.content


async def test_a_server_that_answered_is_waited_for_through_a_restart(server):
    # seen with `runtime serve` killed and started again 40 s later: the job failed within 7 s, its trajectories'
    # work lost ("giving up after 5 attempts: RemoteProtocolError"), though the server came back
    llm = OpenAIBackend(server.url, "m", retry=POLICY)
    try:
        assert await chat(llm) == "back"
        server.down(drops=10)
        assert await chat(llm) == "back"
        assert server.dropped == 10
    finally:
        await llm.aclose()


@pytest.mark.parametrize("status", [502, 503, 504])  # a gateway in front of a server gone
async def test_a_gateway_in_front_of_a_restarting_server_is_waited_for_too(server, status):
    llm = OpenAIBackend(server.url, "m", retry=POLICY)
    try:
        assert await chat(llm) == "back"
        server.down(drops=10, status=status)
        assert await chat(llm) == "back"
        assert server.dropped == 10
    finally:
        await llm.aclose()


@pytest.mark.parametrize("status", [500, 429])
async def test_an_error_the_server_answers_itself_fails_after_the_retries(server, status):
    # the server is up: a request it fails (a bug on this prompt, a quota spent) is not waited on for minutes
    llm = OpenAIBackend(server.url, "m", retry=POLICY)
    try:
        assert await chat(llm) == "back"
        server.down(drops=10, status=status)
        with pytest.raises(LLMError, match=rf"giving up after 3 attempts .*HTTP {status}"):
            await chat(llm)
        assert server.dropped == 3
    finally:
        await llm.aclose()


async def test_a_server_that_never_answered_fails_after_the_retries_as_a_wrong_url_should(server):
    llm = OpenAIBackend(server.url, "m", retry=POLICY)
    server.down(drops=10)
    try:
        with pytest.raises(LLMError, match=r"giving up after 3 attempts .*RemoteProtocolError"):
            await chat(llm)
        assert server.dropped == 3
    finally:
        await llm.aclose()


async def test_requests_during_one_outage_share_one_bound_and_the_next_outage_gets_its_own(server):
    # the aggregator's calls run one after another: each waited the whole outage_s anew, so during one outage a
    # report came several HEAVY_LLM_OUTAGE_S after the job's deadline
    policy = RetryPolicy(max_retries=2, backoff_s=0.001, backoff_max_s=0.01, outage_s=1.0)
    llm = OpenAIBackend(server.url, "m", retry=policy)
    try:
        assert await chat(llm) == "back"
        server.down(drops=10**6)
        with pytest.raises(LLMError, match="giving up"):
            await chat(llm)  # waited the outage through
        before = server.dropped
        with pytest.raises(LLMError, match=r"giving up after 3 attempts .*RemoteProtocolError"):
            await chat(llm)  # the same outage, its bound spent: only the retries
        assert server.dropped - before == 3
        server.down(drops=0)
        assert await chat(llm) == "back"
        server.down(drops=5)  # a new outage, once the server answered again: waited for
        assert await chat(llm) == "back"
        assert server.dropped == 5
    finally:
        await llm.aclose()
