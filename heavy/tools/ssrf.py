"""SSRF guard: decide, before any connection, whether a URL may be fetched, and pin the address it resolved to.

A URL passes when its scheme is http(s), it carries no credentials, and every address its host resolves to is
a public unicast address — or the (address, port) is on the explicit allow-list (the local corpus server).
Embedded IPv4 addresses (IPv4-mapped/-compatible IPv6, 6to4, Teredo, NAT64) are judged by the IPv4 inside, and
numeric host spellings the C resolver accepts (2130706433, 0x7f.1, 0177.0.0.1, 127.1) are decoded first. The
caller connects to `Target.address` — the address that was checked — so a second DNS answer cannot swap it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

import httpx

from heavy.tools import blocking
from heavy.tools.base import ToolError
from heavy.tools.child_pool import ChildDied

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOWED_SCHEMES = {"http": 80, "https": 443}
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NUMERIC_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
# A lookup's own bound, its wait for a free DNS child included: glibc's default for one silent nameserver (5 s, twice)
LOOKUP_TIMEOUT_S = 10.0


class BlockedURL(ToolError):
    """The URL targets an address or scheme the guard refuses."""


@dataclass(frozen=True)
class AllowedTarget:
    """An address (and optionally one port) fetches may reach although it is not public."""

    address: str
    port: int | None = None

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.address)  # raises ValueError on anything but an IP literal

    def matches(self, address: IPAddress, port: int) -> bool:
        return ipaddress.ip_address(self.address) == address and self.port in (None, port)


@dataclass(frozen=True)
class Target:
    url: httpx.URL  # as given (after redirects: the hop's URL)
    host: str  # ASCII host name for the Host header and TLS SNI
    address: IPAddress  # the checked address to connect to
    port: int
    others: tuple[IPAddress, ...] = ()  # the host's other addresses, checked too: to try when `address` is unreachable

    @property
    def connect_url(self) -> httpx.URL:
        return self.url.copy_with(host=str(self.address), port=self.port)

    @property
    def host_header(self) -> str:
        default = ALLOWED_SCHEMES[self.url.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


async def send_pinned(client: httpx.AsyncClient, target: Target, method: str, headers: dict[str, str],
                      content: bytes | None = None) -> httpx.Response:
    """The response's head (its body left to stream) from the first of the host's checked addresses that takes the
    connection, with the host's name as Host and TLS SNI. Browsers fall back so: a host whose first address is
    unreachable (a broken AAAA record) was not reached at all. A refused connection carried no byte of the request,
    so a POST is not sent twice. When no address takes it, the last one's ConnectError or ConnectTimeout."""
    for address in (target.address, *target.others):
        request = client.build_request(
            method, replace(target, address=address).connect_url, content=content,
            headers={**headers, "Host": target.host_header},
            extensions={"sni_hostname": target.host} if target.url.scheme == "https" else {},
        )
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error: httpx.HTTPError = exc
    raise error


def decode_numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton's spellings: 1-4 parts, each decimal, 0x-hex or 0-octal; the last part fills the remaining bytes."""
    parts = host.lower().rstrip(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    try:
        values = [int(p, 16) if p.startswith("0x") else int(p, 8) if len(p) > 1 and p[0] == "0" else int(p)
                  for p in parts]
    except ValueError:  # "0x" alone, or 8/9 in an octal part: not an address, a (strange) name
        return None
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 256 ** (4 - len(leading)):
        return None
    number = last
    for position, value in enumerate(leading):
        number |= value << (8 * (3 - position))
    return ipaddress.IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    host = host.strip("[]").split("%", 1)[0]  # an IPv6 zone id does not change which address is meant
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return decode_numeric_ipv4(host)


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address can carry to an IPv4 host."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in NAT64_PREFIX or (address in IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` must not be fetched, or None when it is a public unicast address."""
    for candidate in (*embedded_ipv4(address), address):  # the embedded IPv4 gives the clearer reason
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata address"
        for reason, bad in (
            ("an unspecified address", candidate.is_unspecified),
            ("a loopback address", candidate.is_loopback),
            ("a link-local address", candidate.is_link_local),
            # fec0::/10: deprecated, but still routed inside networks that use it, and ipaddress calls it global
            ("a site-local address", isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local),
            ("a multicast address", candidate.is_multicast),
            ("a private address", candidate.is_private),
            ("a reserved address", candidate.is_reserved),
            ("a non-public address", not candidate.is_global),
        ):
            if bad:
                return reason
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The C library's answer (nsswitch, /etc/hosts, DNS), looked up in a child process that is killed when the
    lookup takes longer than LOOKUP_TIMEOUT_S or its caller gives up: a resolver that never answers holds nothing."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            return await blocking.DNS.run(blocking.addresses_of, host, port)
    except TimeoutError:
        raise OSError(f"no answer within {LOOKUP_TIMEOUT_S:g} s") from None
    except ChildDied as exc:
        raise OSError(str(exc)) from exc


class SsrfGuard:
    def __init__(self, allow: Iterable[AllowedTarget] = (), resolver: Resolver = system_resolver,
                 allow_public: bool = True) -> None:
        self.allow = tuple(allow)
        self.resolver = resolver
        self.allow_public = allow_public  # False: only the allow-list, by IP literal, and no DNS lookup at all

    async def check(self, url: str | httpx.URL) -> Target:
        """The pinned target for `url`, or BlockedURL saying why it is refused."""
        parsed = _parse(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port or ALLOWED_SCHEMES[parsed.scheme]
        literal = parse_ip_literal(host)
        if not self.allow_public and (literal is None or not any(e.matches(literal, port) for e in self.allow)):
            raise BlockedURL(f"refused to fetch {parsed}: this run may open only its own corpus pages")
        addresses = [literal] if literal is not None else await self._resolve(host, port)
        for address in addresses:
            self._refuse_unless_allowed(str(parsed), address, port)
        first, *others = dict.fromkeys(addresses)  # in the resolver's order of preference, each once
        return Target(url=parsed, host=host, address=first, port=port, others=tuple(others))

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            answers = await self.resolver(host, port)
        except OSError as exc:
            raise ToolError(f"cannot resolve host {host!r}: {exc}") from exc
        addresses = [parse_ip_literal(a) for a in answers]
        if not addresses or None in addresses:
            raise ToolError(f"host {host!r} did not resolve to an IP address")
        return addresses  # type: ignore[return-value]

    def _refuse_unless_allowed(self, url: str, address: IPAddress, port: int) -> None:
        if any(entry.matches(address, port) for entry in self.allow):
            return
        reason = refusal_reason(address)
        if reason is not None:
            raise BlockedURL(f"refused to fetch {url}: it resolves to {address}, {reason}")


def _parse(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise BlockedURL(f"invalid URL {str(url)!r}: {exc}") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise BlockedURL(f"refused to fetch {url}: only http and https URLs can be opened")
    if not parsed.raw_host:
        raise BlockedURL(f"invalid URL {str(url)!r}: no host")
    if parsed.userinfo:
        raise BlockedURL(f"refused to fetch {url}: URLs with credentials are not opened")
    return parsed
