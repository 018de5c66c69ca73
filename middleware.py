"""Pure ASGI middleware, the 422 handler and logging set-up: what wraps every request.

Tier: safeguard, beside the lesson. `main.create_app` adds these; a beginner may skip
the module on a first read.

Patterns shown:
- Pure ASGI middleware classes (no `BaseHTTPMiddleware`, which costs throughput and
  breaks streaming): they see the raw `scope`, `receive` and `send`.
- `RequestLogMiddleware`: an `X-Request-ID` on every response, one INFO line per
  request, and the one handler for unhandled errors (500 without a traceback in the
  body; the traceback goes to the log with the request id).
- `BodySizeLimitMiddleware`: 413 before a large body is read whole, with or without
  `Content-Length`.
- `configure_logging`: stdlib logging to stderr, once, at `LOG_LEVEL`.
- `printable`: what a request sent is escaped before it is logged, so it cannot forge a line.
- `validation_error_handler`: FastAPI's 422 body, with every echo of the input clipped
  (at most 100 characters, valid JSON), whatever the input.

Imports: no project module.
"""

import json
import logging
import math
import re
import reprlib
import sys
import time
import uuid
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The largest valid body, a notification, is under 64 KiB: a larger one is refused before it
# is read, so no body can hold the event loop in json.loads (SPEC 5).
MAX_BODY_BYTES = 64 * 1024
MAX_ECHOED_CHARACTERS = 100


def printable(text: str) -> str:
    """`text` with control characters escaped as Python writes them (`\\n`, `\\x1b`): a
    decoded path such as `/x%0AFAKE` cannot start a log line of its own or color a
    terminal (SPEC 7)."""
    return CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)


class AppLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The app's stderr handler, a class of its own so it is added only once."""


def configure_logging(level: str) -> None:
    """Send the app's logs to stderr at `level`; safe to call more than once."""
    root = logging.getLogger()
    if not any(isinstance(handler, AppLogHandler) for handler in root.handlers):
        handler = AppLogHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    # Our request line replaces uvicorn's access line: one line per request, with its id.
    logging.getLogger("uvicorn.access").disabled = True
    # At DEBUG or INFO these would log form fields (passwords) and SQL with its parameters.
    for name in ("multipart", "python_multipart", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RequestLogMiddleware:
    """Request id, one log line per request, and the 500 handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex
        status_code = 500
        response_started = logged = False
        started = time.perf_counter()

        def log_request() -> None:
            nonlocal logged
            logged = True
            duration_ms = (time.perf_counter() - started) * 1000
            path = printable(scope["path"])
            logger.info("%s %s %s %.1fms request_id=%s", scope["method"], path, status_code, duration_ms, request_id)

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                status_code = message["status"]
                response_started = True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged when the client has the whole response: background tasks run
                # after this and are not part of the request's duration.
                log_request()

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            path = printable(scope["path"])
            logger.exception("Unhandled error in %s %s request_id=%s", scope["method"], path, request_id)
            if response_started:
                raise
            response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
            await response(scope, receive, send_with_request_id)
        finally:
            if not logged:  # the client went away before the response was complete
                log_request()


class BodySizeLimitMiddleware:
    """413 for request bodies over `max_bytes`, counted as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_length = Headers(scope=scope).get("content-length", "")
        if content_length.isdigit() and int(content_length) > self.max_bytes:
            response = JSONResponse({"detail": "Request body too large"}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body, so
                    # this becomes the same 413 as above.
                    raise HTTPException(status_code=413, detail="Request body too large")
            return message

        await self.app(scope, limited_receive, send)


def clipped(value: Any) -> Any:
    """A value as a 422 echoes it: at most 100 characters, valid JSON (SPEC 5). A long string
    is cut; NaN and Infinity (which Python's json.loads accepts) become strings; a list or
    object becomes a short preview that reprlib builds without walking it whole."""
    if isinstance(value, str):
        return value[:MAX_ECHOED_CHARACTERS]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if (
        value is None
        or isinstance(value, bool)
        or (isinstance(value, int) and len(str(value)) <= MAX_ECHOED_CHARACTERS)
    ):
        return value
    return reprlib.repr(value)[:MAX_ECHOED_CHARACTERS]


def clipped_error(error: dict[str, Any]) -> dict[str, Any]:
    """One error of a 422 with every echo of the input clipped: the input itself, and the
    message and context, which repeat parts of it (an invalid email's characters, say)."""
    echoed = {"msg": clipped(error["msg"])}
    if "input" in error:
        echoed["input"] = clipped(error["input"])
    if "ctx" in error:
        echoed["ctx"] = {
            key: clipped(value) if isinstance(value, str) else value for key, value in error["ctx"].items()
        }
    return error | echoed


async def validation_error_handler(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body with each error clipped, rendered ASCII-only: the default handler
    echoes the input whole, and fails with a 500 when it holds a lone surrogate ("\\ud800")."""
    errors = [clipped_error(error) for error in exc.errors()]
    content = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(content, status_code=422, media_type="application/json")


# For `FastAPI(exception_handlers=...)`: the 422 handler above instead of FastAPI's own.
EXCEPTION_HANDLERS: dict[Any, Any] = {RequestValidationError: validation_error_handler}
