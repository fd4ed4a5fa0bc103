"""Cache of opened pages by URL. In memory here, per process; service workers share theirs through Redis
(redis_page_cache.py)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Protocol

from heavy.compat import from_known_fields


@dataclass(frozen=True)
class Page:
    url: str  # as requested
    final_url: str  # after redirects
    title: str
    text: str  # Markdown or plain text
    fetched_at: float
    content_hash: str  # sha256 hex of `text`
    truncated: bool  # the body hit the fetch size cap

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Page:
        return from_known_fields(cls, data)  # a newer heavy's page too (workers of two versions share a cache)


class PageCache(Protocol):
    async def get(self, url: str) -> Page | None: ...

    async def put(self, page: Page) -> None: ...


class InMemoryPageCache:
    """Least-recently-used pages, at most `max_entries`; safe to share between threads."""

    def __init__(self, max_entries: int = 512) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._pages: OrderedDict[str, Page] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, url: str) -> Page | None:
        with self._lock:
            page = self._pages.get(url)
            if page is not None:
                self._pages.move_to_end(url)
            return page

    async def put(self, page: Page) -> None:
        with self._lock:
            self._pages[page.url] = page
            self._pages.move_to_end(page.url)
            while len(self._pages) > self.max_entries:
                self._pages.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pages)
