"""Streamlit's own JavaScript and CSS, served gzip-compressed and compressed only once.

Streamlit 1.67 serves ``/static/*`` uncompressed on purpose (see ``_should_bypass_gzip`` in
``streamlit/web/server/starlette/starlette_gzip_middleware.py``): Starlette's GZipMiddleware would
compress the same immutable bundle again on every request, and a reverse proxy usually does the
job in production. There is no setting to turn it on. A dashboard started with ``streamlit run``
on a workstation has no proxy, so every cold page pulled 7.7-11 MB (the Plotly chunk alone is
4.7 MB, 1.4 MB gzipped). This middleware answers Streamlit's objection instead: each asset is
compressed once per Streamlit version, kept in memory and on disk (the bundles are
content-hashed and never change), and served with ``Content-Encoding: gzip`` to clients that
accept it. Everything else passes through untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]  # fmt: skip

COMPRESSIBLE = ("text/", "application/javascript", "application/json", "image/svg+xml")
MINIMUM_SIZE = 1024  # smaller bodies gain nothing
LEVEL = 6  # level 9 saves 0.2 % on the Plotly chunk for 50 % more time


def cache_folder() -> Path:
    """Where compressed assets are kept between server starts, per Streamlit version."""
    from importlib.metadata import version

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "oialr-studio" / f"streamlit-{version('streamlit')}"


class CompressedStatic:
    """ASGI middleware: gzip for Streamlit's ``/static/`` assets, computed once per asset.

    Args:
        app: The ASGI app to wrap (Streamlit's).
        folder: Disk cache of compressed assets; None keeps them in memory only.
    """

    def __init__(self, app: ASGIApp, folder: Path | None = None) -> None:
        self.app = app
        self.folder = folder
        self._memory: dict[str, bytes] = {}

    async def __call__(self, scope: Scope, receive, send) -> None:
        if not _wants_gzip(scope):
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        headers = {k.lower(): v for k, v in start.get("headers", [])}
        kind = headers.get(b"content-type", b"").decode("latin-1")
        if (
            start.get("status") != 200
            or b"content-encoding" in headers
            or len(body) < MINIMUM_SIZE
            or not kind.startswith(COMPRESSIBLE)
        ):
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        etag = headers.get(b"etag", b"").decode("latin-1")
        packed = await self._compressed(scope["path"], etag, body)
        out = [
            (k, v)
            for k, v in start["headers"]
            if k.lower() not in (b"content-length", b"etag", b"accept-ranges")
        ]
        out += [(b"content-length", str(len(packed)).encode()), (b"content-encoding", b"gzip"),
                (b"vary", b"Accept-Encoding")]  # fmt: skip
        if etag:  # another representation of the same file: a weak validator (as nginx does)
            out.append((b"etag", ("W/" + etag.removeprefix("W/")).encode("latin-1")))
        await send({**start, "headers": out})
        await send({"type": "http.response.body", "body": packed})

    async def _compressed(self, path: str, etag: str, body: bytes) -> bytes:
        key = hashlib.sha256(f"{path}\0{etag}\0{len(body)}".encode()).hexdigest()[:32]
        if key in self._memory:
            return self._memory[key]
        stored = self.folder / f"{key}.gz" if self.folder else None
        if stored is not None and stored.is_file():
            packed = stored.read_bytes()
        else:
            # Off the event loop: the Plotly chunk takes ~0.2 s; mtime=0 keeps the bytes stable.
            packed = await anyio.to_thread.run_sync(lambda: gzip.compress(body, LEVEL, mtime=0))
            if stored is not None:
                _store(stored, packed)
        self._memory[key] = packed
        return packed


def _wants_gzip(scope: Scope) -> bool:
    """A plain GET of a static asset by a client that accepts gzip (no range request)."""
    if scope["type"] != "http" or scope.get("method") != "GET":
        return False
    if "/static/" not in scope.get("path", ""):
        return False
    headers = dict(scope.get("headers") or [])
    return b"gzip" in headers.get(b"accept-encoding", b"") and b"range" not in headers


def _store(path: Path, data: bytes) -> None:
    """Writes atomically (two servers may compress the same asset); a read-only home is fine."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(data)
        partial.replace(path)
    except OSError:
        pass
