"""`python -m runtime serve --api-key ... --max-body-bytes ...` in a process of its own on loopback (the tiny Kimi
checkpoint): every route but the probes and /metrics wants one of the keys, heavy's openai backend sends its
HEAVY_OPENAI_API_KEY, and a body past the cap is a 413 whether its size is declared or it comes in chunks."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from heavy.config import Settings
from heavy.llm import LLMError, RetriableLLMError, make_backend
from heavy.llm.types import Sampling
from runtime.cli import API_KEY_ENV, main
from runtime.server.gate import JSON_BYTES_PER_TOKEN, default_max_body_bytes
from tests.net import free_port
from tests.processes import stop_process

KEYS = ("key-one", "key-two")
ENV_KEY = "key-from-the-environment"  # the flags win over it
CAP = 65536
MODEL = "tiny-kimi"
STARTUP_S = 300
PROTECTED = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
             ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/docs"), ("GET", "/openapi.json"),
             ("GET", "/no/such/route")]
REFUSED_AUTHORIZATIONS = [None, "Bearer wrong", f"Basic {KEYS[0]}", f"Bearer {ENV_KEY}", "Bearer", KEYS[0],
                          f"Bearer {KEYS[0]}x"]


@contextlib.contextmanager
def serving(checkpoint, log_path, *flags: str):
    """`python -m runtime serve` with our keys and cap (and $RUNTIME_API_KEY set) on a free loopback port: its URL."""
    port = free_port()
    keys = [word for key in KEYS for word in ("--api-key", key)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--model", str(checkpoint), "--served-model-name", MODEL,
             "--host", "127.0.0.1", "--port", str(port), *keys, "--max-body-bytes", str(CAP), *flags],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, API_KEY_ENV: ENV_KEY})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"runtime serve not up (exit {process.poll()}):\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:  # open: no key needed
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        yield base
    finally:
        stop_process(process, timeout_s=30)


@pytest.fixture(scope="module")
def served(tiny_kimi_path, tmp_path_factory):
    """The module's server: its URL and the file its stdout and stderr go to."""
    log_path = tmp_path_factory.mktemp("gate") / "serve.log"
    with serving(tiny_kimi_path, log_path) as base:
        yield base, log_path


@pytest.fixture(scope="module")
def url(served):
    return served[0]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _chat(prompt: str = "hi") -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2}


def _assert_openai_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("authorization", REFUSED_AUTHORIZATIONS)
def test_every_route_but_the_probes_wants_one_of_the_keys(url, method, path, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx.request(method, url + path, headers=headers, json=_chat(), timeout=30)
    _assert_openai_error(response, 401)
    assert response.json()["error"]["code"] == "invalid_api_key"  # OpenAI's (it was null)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", KEYS)
def test_each_key_given_opens_the_routes(url, key):
    assert httpx.get(f"{url}/v1/models", headers=_bearer(key), timeout=30).json()["data"][0]["id"] == MODEL
    chat = httpx.post(f"{url}/v1/chat/completions", headers=_bearer(key), json=_chat(), timeout=120)
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] > 0
    tokenized = httpx.post(f"{url}/tokenize", headers={"authorization": f"bearer {key}"},  # the scheme in any case
                           json={"model": MODEL, "prompt": "hi"}, timeout=30)
    assert tokenized.status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_the_probes_and_metrics_stay_open(url, path):
    assert httpx.get(url + path, timeout=30).status_code == 200


@pytest.mark.anyio
async def test_heavys_openai_backend_sends_its_setting_as_the_key(url):
    """What the k8s workers do: HEAVY_OPENAI_API_KEY (the Secret's value, also the runtime's RUNTIME_API_KEY)."""
    def backend(key: str):
        return make_backend(Settings(backend="openai", openai_base_url=f"{url}/v1", model=MODEL, openai_api_key=key,
                                     llm_max_retries=0))

    keyed = backend(KEYS[1])
    try:
        completion = await keyed.chat([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=2)
        assert completion.usage.completion_tokens > 0
        assert await keyed.served_context() is not None  # GET /v1/models, keyed too
    finally:
        await keyed.aclose()
    keyless = backend("")
    try:
        with pytest.raises(LLMError, match="HTTP 401") as refused:
            await keyless.chat([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=2)
        assert not isinstance(refused.value, RetriableLLMError)  # a missing key is not waited out
    finally:
        await keyless.aclose()


def test_every_line_serve_logs_is_one_json_object_with_no_key_in_it(served):
    """A log pipeline parses each line (uvicorn's access lines included), and no line holds a key, the one from
    the environment and a wrong one tried included."""
    url, log_path = served
    httpx.post(f"{url}/v1/chat/completions", headers=_bearer(KEYS[0]), json=_chat(), timeout=120)
    httpx.get(f"{url}/v1/models", headers=_bearer(f"{KEYS[1]}-wrong"), timeout=30)
    httpx.get(f"{url}/health", timeout=30)
    text = log_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert any('"POST /v1/chat/completions HTTP/1.1" 200' in r["msg"] for r in records), records
    assert any('"GET /v1/models HTTP/1.1" 401' in r["msg"] for r in records), records
    assert not [key for key in (*KEYS, ENV_KEY) if key in text]


def _raw(url: str, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request on a raw socket (the body sent as given), the whole answer read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    header_text, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = header_text.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, content


def _head(url: str, key: str, length_header: str) -> str:
    return (f"POST /v1/chat/completions HTTP/1.1\nHost: {url.removeprefix('http://')}\n"
            f"Authorization: Bearer {key}\nContent-Type: application/json\n{length_header}\n")


def _chunked(data: bytes, size: int = 8192) -> bytes:
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)  # no last chunk: not needed


def test_a_declared_size_past_the_cap_is_a_413_before_any_of_the_body_is_read(url):
    status, headers, content = _raw(url, _head(url, KEYS[0], f"Content-Length: {10**9}"))  # and no body sent
    assert status == 413 and headers["connection"] == "close"
    error = json.loads(content)["error"]
    assert error["type"] == "invalid_request_error" and f"({CAP} bytes" in error["message"]


def test_a_chunked_body_past_the_cap_is_a_413(url):
    body = json.dumps(_chat("x" * CAP)).encode()
    status, headers, content = _raw(url, _head(url, KEYS[0], "Transfer-Encoding: chunked"), _chunked(body))
    assert status == 413 and headers["connection"] == "close"
    assert f"({CAP} bytes" in json.loads(content)["error"]["message"]


@pytest.mark.parametrize("length_header", ["content-length", "chunked"])
def test_a_body_within_the_cap_is_served_either_way(url, length_header):
    body = json.dumps(_chat("hello " * 100)).encode()
    header = f"Content-Length: {len(body)}" if length_header == "content-length" else "Transfer-Encoding: chunked"
    sent = body if length_header == "content-length" else _chunked(body) + b"0\r\n\r\n"
    status, _, content = _raw(url, _head(url, KEYS[1], header) + "Connection: close\n", sent)
    assert status == 200, content


def test_a_big_body_without_a_key_is_refused_for_the_key(url):
    status, _, _ = _raw(url, _head(url, "wrong", f"Content-Length: {10**9}"))
    assert status == 401


@pytest.mark.slow  # the embedded model's tokenizer (converted on first use)
def test_the_default_cap_holds_a_prompt_of_the_longest_tokens_at_the_full_context(embedded_tokenizer):
    """Of the embedded vocabulary: the costliest JSON of a prompt at 8192 tokens, as text or as token ids."""
    vocabulary = range(embedded_tokenizer.vocab_size)
    longest = max((embedded_tokenizer.decode([i]) for i in vocabulary), key=lambda text: len(json.dumps(text)))
    assert len(json.dumps(longest)) - 2 <= JSON_BYTES_PER_TOKEN
    context = 8192
    as_text = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": longest * context}]})
    as_ids = json.dumps({"model": MODEL, "prompt": [max(vocabulary)] * context})
    assert max(len(as_text), len(as_ids)) <= default_max_body_bytes(context) == 2 * 2**20


@pytest.mark.ray
@pytest.mark.slow
def test_served_from_ray_replicas_the_key_and_the_cap_hold_the_same(tiny_kimi_path, tmp_path):
    """`--replicas`: the app over the router (runtime/replica/serving.py) is gated as the one over an engine, and
    logs JSON lines only, Ray's own lines (its auth-token warning, its start) included."""
    log_path = tmp_path / "serve.log"
    with serving(tiny_kimi_path, log_path, "--replicas", "1") as base:
        assert httpx.get(f"{base}/ready", timeout=30).status_code == 200
        _assert_openai_error(httpx.post(f"{base}/v1/chat/completions", json=_chat(), timeout=30), 401)
        served = httpx.post(f"{base}/v1/chat/completions", headers=_bearer(KEYS[0]), json=_chat(), timeout=120)
        assert served.status_code == 200, served.text
        body = json.dumps(_chat("x" * CAP)).encode()
        status, _, _ = _raw(base, _head(base, KEYS[0], "Transfer-Encoding: chunked"), _chunked(body))
        assert status == 413
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert any(r["logger"].startswith("ray") and "Started a local Ray instance" in r["msg"] for r in records), records


@pytest.mark.parametrize("host, keyed, warned", [
    ("0.0.0.0", False, True), ("::", False, True), ("heavy-runtime", False, True), ("0.0.0.0", True, False),
    ("127.0.0.1", False, False), ("::1", False, False), ("localhost", False, False),
])
def test_serve_beyond_loopback_without_a_key_says_so(monkeypatch, caplog, tiny_kimi_path, host, keyed, warned):
    """In its log (JSON lines, as serve's every line)."""
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: None)
    monkeypatch.setattr("runtime.server.app.serve", lambda *_, **__: None)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["serve", "--model", str(tiny_kimi_path), "--host", host, *(["--api-key", "k"] if keyed else [])]) == 0
    warning = f"serving on {host} without an API key: whoever reaches the port runs the model"
    assert any(warning in record.getMessage() and record.levelname == "WARNING" for record in caplog.records) == warned


def test_serve_takes_the_key_from_the_environment_when_no_flag_names_one(monkeypatch, tiny_kimi_path):
    taken = []
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: None)
    monkeypatch.setattr("runtime.server.app.serve", lambda *_, **options: taken.append(
        (options["api_keys"], options["max_body_bytes"])))
    for environment, flags, expected in [
        (ENV_KEY, [], ((ENV_KEY,), None)),
        (ENV_KEY, ["--api-key", "a", "--api-key", "b", "--max-body-bytes", "9"], (("a", "b"), 9)),
        ("", [], ((), None)),  # an empty variable (an unset Secret value) is no key
    ]:
        monkeypatch.setenv(API_KEY_ENV, environment)
        assert main(["serve", "--model", str(tiny_kimi_path), *flags]) == 0
        assert taken.pop() == expected


@pytest.mark.parametrize("flags, message", [
    (["--api-key", ""], "an API key must be non-empty, printable and without whitespace"),
    (["--api-key", "two words"], "an API key must be non-empty, printable and without whitespace"),
    (["--max-body-bytes", "0"], "--max-body-bytes must be > 0, got 0"),
])
def test_a_key_no_client_can_send_or_a_cap_of_nothing_is_refused_before_the_model_loads(
        monkeypatch, capsys, tiny_kimi_path, flags, message):
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: pytest.fail("a model loaded"))
    assert main(["serve", "--model", str(tiny_kimi_path), *flags]) == 1
    assert capsys.readouterr().err.strip() == f"error: ValueError: {message}"
