"""The write key: endpoints that change the index require it when the service has one.

It is checked in ASGI middleware, before the request body is read, so a client without the key cannot make the
server receive (and spool to disk) an upload it is going to refuse anyway.
"""
from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from polymodal.serve.errors import error_response

__all__ = ["WriteKeyGuard"]


class WriteKeyGuard:
    """Refuses requests to ``paths`` without ``key`` (401) or with another key (403).

    The key travels as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; it is compared in constant time.
    """

    def __init__(self, app: ASGIApp, key: str, paths: frozenset[str]) -> None:
        self.app, self.key, self.paths = app, key.encode(), paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            refusal = self._refusal(Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: Headers):
        given = headers.get("x-api-key")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = token.strip()
        if not given:
            return error_response(401, "unauthorized", "this endpoint needs the API key: send 'Authorization: Bearer "
                                                       "KEY' or 'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), self.key):
            return error_response(403, "forbidden", "the API key is wrong")
        return None
