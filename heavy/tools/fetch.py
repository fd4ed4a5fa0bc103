"""HTTP fetching behind the SSRF guard: every hop checked, the checked address connected to, bytes capped.

Redirects are followed here, one hop at a time, so each new location passes the guard before any connection.
The request goes to the pinned IP with the original Host header (and TLS SNI), and the environment's proxy
settings are ignored, so no other component resolves the name again. The body is decompressed here, never more
than the size cap at a time: httpx's own decoders inflate a whole network read at once, and a 2 KB body of gzip
inside gzip held 1 GiB.
"""

from __future__ import annotations

import codecs
import re
import ssl
import zlib
from dataclasses import dataclass

import httpx

from heavy.tools.base import ToolError
from heavy.tools.ssrf import SsrfGuard, Target, send_pinned

USER_AGENT = "heavy-research/0.1 (+open_page)"
GZIP_WBITS = 16 + zlib.MAX_WBITS
ENCODING_WBITS = {"gzip": GZIP_WBITS, "x-gzip": GZIP_WBITS, "deflate": zlib.MAX_WBITS}  # the encodings we ask for
ACCEPT_ENCODING = "gzip, deflate"
BYTE_ORDER_MARKS = (  # UTF-32 first: its little-endian mark begins with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)
META_PRESCAN_BYTES = 1024  # where HTML puts its <meta charset>
XML_DECLARATION = re.compile(rb"""<\?xml[^>]*?\sencoding\s*=\s*["']([\w.:-]+)""")  # first in an XML document
DETECT_BYTES = 65_536  # of a body naming no charset and not UTF-8, what its encoding is guessed from
# bytes past ASCII a guess needs: fewer read as well in many encodings ("Zürich" in windows-1252 was guessed Urdu's
# cp1006, "Москва" in windows-1251 Big5); windows-1252 then, as before
GUESS_MIN_BYTES = 16
NON_ASCII = re.compile(rb"[\x80-\xff]")


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 2_000_000
    max_redirects: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_redirects < 0:
            raise ValueError(f"invalid fetch limits: {self}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0: {self}")


@dataclass(frozen=True)
class FetchedResponse:
    url: str  # the final URL after redirects
    status: int
    content_type: str  # media type only, lower case ("text/html")
    text: str
    truncated: bool  # the body was longer than max_bytes
    body: bytes  # as received, decompressed (a PDF is read from it)


class PageFetcher:
    def __init__(
        self, guard: SsrfGuard, limits: FetchLimits | None = None, verify: ssl.SSLContext | bool = True
    ) -> None:
        self.guard = guard
        self.limits = limits or FetchLimits()
        self.verify = verify  # TLS verification: True (system CAs) or a context, e.g. with a private CA

    async def fetch(self, url: str) -> FetchedResponse:
        timeout = httpx.Timeout(self.limits.read_timeout_s, connect=self.limits.connect_timeout_s)
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=timeout, verify=self.verify
        ) as client:
            current = url
            for _ in range(self.limits.max_redirects + 1):
                target = await self.guard.check(current)
                outcome = await self._get(client, target)
                if isinstance(outcome, FetchedResponse):
                    return outcome
                current = outcome
            raise ToolError(f"too many redirects (more than {self.limits.max_redirects}) starting at {url}")

    async def _get(self, client: httpx.AsyncClient, target: Target) -> FetchedResponse | str:
        """The response, or the next URL when the server redirects."""
        response = await self._connect(client, target)
        try:
            if response.is_redirect:
                return str(target.url.join(response.headers["location"]))
            if response.status_code >= 400:
                raise ToolError(f"HTTP {response.status_code} for {target.url}")
            body, truncated = await self._read_capped(response, target)
        except httpx.HTTPError as exc:  # the server stalled or broke off while sending the body
            raise ToolError(f"could not read {target.url}: {self._describe(exc)}") from exc
        finally:
            await response.aclose()
        return FetchedResponse(
            url=str(target.url), status=response.status_code,
            content_type=response.headers.get("content-type", "").split(";")[0].strip().lower(),
            text=decode_body(body, response.charset_encoding), truncated=truncated, body=body,
        )

    async def _connect(self, client: httpx.AsyncClient, target: Target) -> httpx.Response:
        """The response's head from the first of the host's checked addresses that takes the connection."""
        try:
            return await send_pinned(client, target, "GET", {"User-Agent": USER_AGENT,
                                                             "Accept-Encoding": ACCEPT_ENCODING})
        except httpx.HTTPError as exc:
            raise ToolError(f"could not fetch {target.url}: {self._describe(exc)}") from exc

    def _describe(self, error: httpx.HTTPError) -> str:
        """What went wrong, also for httpx's timeouts, which say nothing ('ReadTimeout: ')."""
        if isinstance(error, httpx.ReadTimeout):
            return f"nothing arrived for {self.limits.read_timeout_s:g} s"
        if isinstance(error, httpx.ConnectTimeout):
            return f"no connection within {self.limits.connect_timeout_s:g} s"
        return f"{type(error).__name__}: {error}"

    async def _read_capped(self, response: httpx.Response, target: Target) -> tuple[bytes, bool]:
        """The body, decompressed, cut at max_bytes: each read inflates into the room left, no more."""
        inflater = Inflater.for_encoding(response.headers.get("content-encoding", ""), target.url)
        body, limit = bytearray(), self.limits.max_bytes
        async for raw in response.aiter_raw():
            body += inflater.inflate(raw, limit + 1 - len(body)) if inflater else raw  # room >= 1: 0 means no limit
            if len(body) > limit:
                return bytes(body[:limit]), True
        return bytes(body), False


def decode_body(body: bytes, declared: str | None) -> str:
    try:
        return body.decode(body_encoding(body, declared), errors="replace")
    except (LookupError, UnicodeError):  # a charset naming no text codec (zlib, rot13), or one strict only (idna)
        return body.decode("utf-8", errors="replace")


def body_encoding(body: bytes, declared: str | None) -> str:
    """As browsers decide: a byte-order mark, else the Content-Type's charset, else an XML declaration's encoding
    (XML, XHTML, feeds) or a <meta> charset near the top (pages that name theirs only there were read as UTF-8:
    mojibake), else `undeclared_encoding`."""
    known = bom_encoding(body) or _known_encoding(declared)
    if known is not None:
        return known
    meta = XML_DECLARATION.match(body) or META_CHARSET.search(body[:META_PRESCAN_BYTES])
    known = _known_encoding(meta.group(1).decode("ascii")) if meta else None
    if known is None or known.startswith(("utf-16", "utf-32")):  # a <meta> read as ASCII is not in UTF-16/32
        return undeclared_encoding(body)
    return known


def undeclared_encoding(data: bytes) -> str:
    """The encoding of text that names none: UTF-8 when it reads as UTF-8, else the one its bytes look written in,
    as browsers guess (a GBK, Shift_JIS or windows-1251 page that names no charset read as UTF-8 was all U+FFFD).
    It reads as UTF-8 when more of its other characters than not decode: a UTF-8 page with a stray byte is one."""
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data)  # not final: a character cut at the cap
    invalid = text.count("\ufffd")
    if invalid <= len(text) - len(text.encode("ascii", "ignore")) - invalid:
        return "utf-8"
    sample = data[:DETECT_BYTES]
    if len(NON_ASCII.findall(sample)) < GUESS_MIN_BYTES:
        return "cp1252"
    import charset_normalizer  # only for such pages: a few ms to import

    # of the encodings its bytes read best in (UTF-16 and 32 aside: they come with a byte-order mark), windows-1252,
    # HTML's default for a page with no label, when it is one: a short Latin-1 text reads as well in many ("Zürich"
    # was guessed UTF-16, "Ñandú, año" windows-1250 as "Ńandú, ańo")
    guesses = [guess for guess in charset_normalizer.from_bytes(sample)
               if not guess.encoding.startswith(("utf_16", "utf_32"))]
    best = [guess.encoding for guess in guesses if guess.chaos <= guesses[0].chaos] if guesses else ["cp1252"]
    return "cp1252" if "cp1252" in best else codecs.lookup(best[0]).name


def bom_encoding(data: bytes) -> str | None:
    """The encoding a byte-order mark at the start of `data` names, if it has one."""
    return next((encoding for mark, encoding in BYTE_ORDER_MARKS if data.startswith(mark)), None)


def _known_encoding(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


class Inflater:
    """One gzip or deflate layer, inflated at most `room` bytes per call (a tail past the room is never needed: the
    body is cut there)."""

    def __init__(self, encoding: str, url: httpx.URL) -> None:
        self.encoding, self.url = encoding, url
        self._zlib = zlib.decompressobj(ENCODING_WBITS[encoding])
        self._started = False

    @classmethod
    def for_encoding(cls, header: str, url: httpx.URL) -> Inflater | None:
        """None for an identity body. Stacked or other encodings are refused: we asked for one of gzip/deflate."""
        encodings = [e.strip().lower() for e in header.split(",") if e.strip().lower() not in ("", "identity")]
        if not encodings:
            return None
        if len(encodings) > 1 or encodings[0] not in ENCODING_WBITS:
            raise ToolError(f"{url} was sent with Content-Encoding {header!r}, which cannot be read")
        return cls(encodings[0], url)

    def inflate(self, data: bytes, room: int) -> bytes:
        try:
            out = self._zlib.decompress(data, room)
        except zlib.error as exc:
            if self.encoding != "deflate" or self._started:
                raise ToolError(f"{self.url}: corrupt {self.encoding} body ({exc})") from exc
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # some servers send "deflate" without its zlib header
            self._started = True
            return self.inflate(data, room)
        self._started = True
        return out
