"""SSRF suite: every private, loopback, metadata, non-http and disguised target is refused before connecting.

All traffic stays on 127.0.0.1: the allowed server stands in for the local corpus server, the "secret" server for
an internal service an attacker would like to reach; "DNS name to private" uses a scripted resolver.
"""

import asyncio
import ipaddress
import ssl
import subprocess

import pytest

from heavy.tools.base import ToolContext, ToolError, ToolExecutor, ToolLimits
from heavy.tools.fetch import PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.ssrf import AllowedTarget, BlockedURL, SsrfGuard, decode_numeric_ipv4, refusal_reason
from tests.heavy.loopback_server import LoopbackServer, html_page, redirect

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"open_page"}))
SECRET_ROUTES = {"/secret": html_page("Internal", "<p>root password is hunter2</p>")}


@pytest.fixture
def secret():
    with LoopbackServer(SECRET_ROUTES) as server:
        yield server


@pytest.fixture
def allowed(secret):
    routes = {
        "/page": html_page("Corpus page", "<p>A page of the local corpus that may be read.</p>"),
        "/to-private": redirect("http://10.0.0.1/admin"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-secret": redirect(f"http://127.0.0.1:{secret.port}/secret"),
        "/to-secret-decimal": redirect(f"http://2130706433:{secret.port}/secret"),
        "/to-file": redirect("file:///etc/passwd"),
        "/to-gopher": redirect(f"gopher://127.0.0.1:{secret.port}/_GET%20/secret"),
        "/to-page": redirect("/page"),
    }
    with LoopbackServer(routes) as server:
        yield server


def open_page_executor(server, resolver=None):
    guard = SsrfGuard([AllowedTarget("127.0.0.1", server.port)], **({"resolver": resolver} if resolver else {}))
    return ToolExecutor([OpenPageTool(PageFetcher(guard))], ToolLimits(default_call_cap=100))


def open_url(executor, url):
    return asyncio.run(executor.call("open_page", {"url": url}, CTX))


def assert_refused(result, secret):
    assert result.error is not None, result.text
    assert result.sources == ()
    assert secret.requests == [], "the guard let a request through to the internal server"


def direct_targets(secret_port):
    p = secret_port
    return [
        f"http://127.0.0.1:{p}/secret",  # loopback, allowed server's address but another port
        f"http://localhost:{p}/secret",  # a name resolving to loopback (system resolver, no network)
        f"http://[::1]:{p}/secret",
        f"http://0.0.0.0:{p}/secret",
        "http://[::]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # carrier-grade NAT, not public
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fe80::1%25eth0]/",
        "http://[fc00::1]/",
        "http://[fec0::1]/",  # site-local (deprecated, still routable inside a network)
        "http://[fd00:ec2::254]/",
        "http://224.0.0.1/",
        f"http://[::ffff:127.0.0.1]:{p}/secret",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{p}/secret",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::127.0.0.1]/",  # IPv4-compatible IPv6
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        f"http://2130706433:{p}/secret",  # decimal 127.0.0.1
        f"http://017700000001:{p}/secret",  # octal
        f"http://0177.0.0.1:{p}/secret",
        f"http://0x7f000001:{p}/secret",  # hex
        f"http://0x7f.1:{p}/secret",
        f"http://127.1:{p}/secret",
        "http://0/",
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{p}/_GET%20/secret",
        "ftp://example.com/file.txt",
        "data:text/html,<p>hi</p>",
        "javascript:alert(1)",
    ]


def test_direct_targets_are_all_refused(secret, allowed):
    executor = open_page_executor(allowed)
    for url in direct_targets(secret.port):
        result = open_url(executor, url)
        assert result.error is not None, f"{url} was not refused"
        assert "refused" in result.error or "invalid URL" in result.error, (url, result.error)
    assert secret.requests == []


@pytest.mark.parametrize(
    "path", ["/to-private", "/to-metadata", "/to-secret", "/to-secret-decimal", "/to-file", "/to-gopher"]
)
def test_redirects_into_forbidden_targets_are_refused(secret, allowed, path):
    result = open_url(open_page_executor(allowed), f"{allowed.base_url}{path}")
    assert_refused(result, secret)
    assert "refused" in result.error
    assert [p for p, _ in allowed.requests] == [path]


def test_dns_names_resolving_to_private_addresses_are_refused(secret, allowed):
    answers = {
        "intranet.example": ["10.1.2.3"],
        "metadata.example": ["169.254.169.254"],
        "mixed.example": ["93.184.216.34", "127.0.0.1"],  # one bad answer is enough to refuse
        "mapped.example": ["::ffff:192.168.0.1"],
    }

    async def resolver(host, port):
        return answers[host]

    executor = open_page_executor(allowed, resolver)
    for host in answers:
        result = open_url(executor, f"http://{host}:{secret.port}/secret")
        assert result.error is not None and "refused" in result.error, host
    assert secret.requests == []


def test_connection_goes_to_the_checked_address_not_a_second_dns_answer(allowed):
    """DNS rebinding: the first answer passes the guard; a later answer would point inside. Only one is used."""
    calls = []

    async def rebinding_resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.0.0.1"]

    guard = SsrfGuard([AllowedTarget("127.0.0.1", allowed.port)], resolver=rebinding_resolver)
    response = asyncio.run(PageFetcher(guard).fetch(f"http://corpus.example:{allowed.port}/page"))
    assert "A page of the local corpus" in response.text
    assert calls == ["corpus.example"]
    assert allowed.requests == [("/page", f"corpus.example:{allowed.port}")]


def test_a_host_whose_first_address_is_unreachable_is_fetched_from_its_next_checked_one(allowed):
    """Browsers fall back to a host's next address; the fetch gave up at the first (a broken AAAA record). Every
    address was checked before any connection (see mixed.example above)."""
    async def resolver(host, port):
        return ["::1", "127.0.0.1"]  # nothing listens on [::1] at the server's port

    guard = SsrfGuard([AllowedTarget("::1", allowed.port), AllowedTarget("127.0.0.1", allowed.port)],
                      resolver=resolver)
    response = asyncio.run(PageFetcher(guard).fetch(f"http://corpus.example:{allowed.port}/page"))
    assert "A page of the local corpus" in response.text
    assert allowed.requests == [("/page", f"corpus.example:{allowed.port}")]


def test_allow_listed_corpus_server_is_fetched_and_redirects_within_it_work(allowed):
    executor = open_page_executor(allowed)
    direct = open_url(executor, f"{allowed.base_url}/page")
    assert direct.error is None and "A page of the local corpus" in direct.text
    assert direct.sources[0].url == f"{allowed.base_url}/page" and direct.sources[0].title == "Corpus page"
    moved = open_url(executor, f"{allowed.base_url}/to-page")
    assert moved.error is None and "redirected to" in moved.text


def test_credentials_in_urls_are_refused():
    with pytest.raises(BlockedURL, match="credentials"):
        asyncio.run(SsrfGuard().check("http://user:pw@93.184.216.34/"))


@pytest.mark.parametrize(
    ("spelling", "address"),
    [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.01", "127.0.0.1"), ("10.1", "10.0.0.1"),
     ("192.168.257", "192.168.1.1"), ("0", "0.0.0.0")],
)
def test_numeric_host_spellings_decode_like_inet_aton(spelling, address):
    assert decode_numeric_ipv4(spelling) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("name", ["example.com", "1.2.3.4.5", "256.1.1.1.1", "0x", "08.1.1.1", "1e3"])
def test_names_are_not_mistaken_for_numbers(name):
    assert decode_numeric_ipv4(name) is None


def test_public_addresses_pass_the_policy():
    for address in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"]:
        assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names only corpus.example."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=corpus.example", "-addext", "subjectAltName=DNS:corpus.example"],
        check=True, capture_output=True,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with LoopbackServer({"/page": html_page("TLS page", "<p>Served over TLS to a pinned address.</p>")},
                        tls=server_context) as server:
        yield server, ssl.create_default_context(cafile=str(cert))


def test_https_to_a_pinned_address_still_verifies_the_certificate_for_the_host_name(tls_server):
    server, client_context = tls_server

    async def resolver(host, port):
        return ["127.0.0.1"]

    guard = SsrfGuard([AllowedTarget("127.0.0.1", server.port)], resolver=resolver)
    fetcher = PageFetcher(guard, verify=client_context)
    page = asyncio.run(fetcher.fetch(f"https://corpus.example:{server.port}/page"))
    assert "Served over TLS" in page.text
    with pytest.raises(ToolError, match="Hostname mismatch"):
        asyncio.run(fetcher.fetch(f"https://impostor.example:{server.port}/page"))


def test_a_corpus_only_guard_refuses_every_other_host_without_resolving_it():
    looked_up = []

    async def resolver(host, port):
        looked_up.append(host)
        return ["93.184.216.34"]

    guard = SsrfGuard([AllowedTarget("127.0.0.1", 8765)], resolver=resolver, allow_public=False)
    assert asyncio.run(guard.check("http://127.0.0.1:8765/doc/1")).port == 8765
    for url in ("https://www.google.com/search?q=x", "http://93.184.216.34/", "http://127.0.0.1:9999/"):
        with pytest.raises(BlockedURL, match="only its own corpus pages"):
            asyncio.run(guard.check(url))
    assert looked_up == []  # no DNS query leaves the machine
