"""uvicorn's HTTP/1.1 protocol (h11) with JSON errors: what uvicorn answers itself, before the app
sees a request, in the API's error shape ``{"error": message}`` too.

uvicorn answers two things without the app: a request h11 cannot parse (a malformed
``Content-Length``, request line or header) gets a plain-text 400, and a request beyond
``limit_concurrency`` a plain-text 503. This subclass sends both as JSON, the 503 with
``Retry-After``. The limit is checked as uvicorn checks it (connections open, requests in progress),
but inside an ASGI wrapper of the app, since uvicorn's own 503 is not one the subclass can change.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BAD_REQUEST = ("the request is not valid HTTP/1.1 (a malformed request line, header or Content-Length); "
               "the connection is closed.")
RETRY_AFTER_SECONDS = 1


class JsonErrorsH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # uvicorn's check would answer its plain-text 503: the wrapper below makes the same check
        self._limit, self.limit_concurrency = self.limit_concurrency, None
        if self._limit is not None:
            self.app = self._limited(self.app)

    def _limited(self, app):
        async def limited(scope, receive, send):
            # as uvicorn's check, made before a request's task starts: here that task is already counted
            if scope["type"] == "http" and (len(self.connections) >= self._limit or len(self.tasks) - 1 >= self._limit):
                self.logger.warning("Exceeded concurrency limit.")
                body = _error_body(f"the server is serving {self._limit} connections or requests at once, its limit; "
                                   "retry in a moment.")
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

        return limited

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what h11 cannot parse, as JSON (uvicorn writes ``msg`` to its log)."""
        body = _error_body(BAD_REQUEST)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
