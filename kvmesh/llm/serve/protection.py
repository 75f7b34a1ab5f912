"""What keeps one client from hurting the others, and errors in the shape OpenAI's clients read.

`Guard` is plain ASGI middleware around the whole app: it checks the API key (`Authorization: Bearer KEY`, every
route but `/health`) and refuses a body over `max_body_bytes` with 413, from its Content-Length before reading it,
or while reading it when the client sends none (chunked); it reads the body itself, so nothing larger is ever
buffered, and hands it on. A body that takes over `body_timeout` seconds to arrive gets 408. After a large body's
request (parsed, tokenized, answered or refused) the allocator's freed memory goes back to the system, so a flood
of near-limit bodies leaves the server's memory where it was.

`openai_error` builds OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, which the official
client shows as the exception's message (FastAPI's own `{"detail": ...}` shows only the status code there);
`install_error_handlers` makes every refusal of the app use it, validation errors included (400, naming the field,
as OpenAI and vLLM answer them).
"""

from __future__ import annotations

import hmac
import json
import logging

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvmesh.llm.serve.bodies import UnsupportedField
from kvmesh.llm.serve.engine_thread import release_memory

log = logging.getLogger("kvmesh")
KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
CODES = {401: "invalid_api_key", 404: "not_found", 408: "request_timeout", 413: "request_too_large"}
OPEN = ("/health",)  # routes that need no key: a load balancer's probe
LARGE_BODY = 2**16  # bytes: after a request this large, freed memory goes back to the system


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error body: `code` a string (or null), `type` one of its kinds."""
    kind = KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": CODES.get(status)}}


def openai_error(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    """A JSON response with OpenAI's error body."""
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal of `app` in OpenAI's error body: its own, the router's (404, 405), validation (400) and any
    error nothing else caught (500)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return openai_error(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = first.get("msg", "invalid request")
        return openai_error(400, f"{where}: {message}" if where else message, param=where or None)

    @app.exception_handler(UnsupportedField)
    async def unsupported(request: Request, error: UnsupportedField) -> JSONResponse:
        return openai_error(400, str(error), param=error.param)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("request to %s failed: %s: %s", request.url.path, type(error).__name__, error)
        return openai_error(500, "the server failed on this request; see the server log")


class Guard:
    """ASGI middleware: API key and body size (see the module docstring)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout: float = 30.0) -> None:
        self.app, self.api_key, self.max_body_bytes, self.body_timeout = app, api_key, max_body_bytes, body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.api_key is not None and scope["path"] not in OPEN:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                await _send(send, 401, "a valid API key is needed: send 'Authorization: Bearer KEY' (serve --api-key)")
                return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send(send, 413, self._too_large())
            return
        chunks, size, refused = [], 0, None
        try:
            with anyio.fail_after(self.body_timeout):  # a client that drips its body holds nothing for long
                while True:  # read here, up to the limit, so nothing larger is ever buffered
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_body_bytes:
                        refused = (413, self._too_large())
                        break
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            refused = (408, f"the request body took over {self.body_timeout:g} s to arrive")
        if refused is not None:  # sent outside the deadline's scope: one answer, whatever the clock does
            await _send(send, *refused)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the connection's own messages: a disconnect

        try:
            await self.app(scope, replay, send)
        finally:
            if size > LARGE_BODY:  # its parse and tokenization freed tens of MB the allocator would keep
                await anyio.to_thread.run_sync(release_memory)

    def _too_large(self) -> str:
        return f"the request body is over {self.max_body_bytes:,} bytes (kvmesh serve --max-body-bytes)"


async def _send(send, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
