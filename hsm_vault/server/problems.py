"""Errors as RFC 9457 problem documents (`application/problem+json`), everywhere.

Routes raise `Problem` (or a FastAPI `HTTPException`); validation errors, unknown paths and
unexpected failures are turned into problem documents too, so a client only ever has to parse
one error shape: `{"type", "title", "status", "detail"}` plus optional extension members.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hsm_vault.errors import HsmVaultError

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Seconds a client is asked to wait after a 503 (busy, or the database unreachable).
RETRY_AFTER = "1"
log = logging.getLogger("hsm_vault.server")


class ProblemDocument(BaseModel):
    """An RFC 9457 problem document, as every error answer of the API is."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries saying these statuses answer with a problem document."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "model": ProblemDocument,
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


class Problem(Exception):
    """An error to answer with a problem document; `detail` is shown to the person."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
        self.headers = headers
        self.extensions = extensions


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extensions,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        errors.append({"location": location, "message": str(error.get("msg", ""))})
    first = errors[0] if errors else {"location": "", "message": "invalid request"}
    return f"{first['location']}: {first['message']}", errors


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error response of `app` a problem document."""

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            title=exc.title,
            type_=exc.type,
            headers=exc.headers,
            **exc.extensions,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint"
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            # Starlette names the methods of the first route of the path only.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem_response(exc.status_code, detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _validation_detail(exc)
        return problem_response(422, f"invalid request: {detail}", errors=errors)

    @app.exception_handler(HsmVaultError)
    async def _library(_request: Request, exc: HsmVaultError) -> JSONResponse:
        status = exc.http_status
        if status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        return problem_response(status, exc.message, error=type(exc).__name__)

    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _pool_exhausted(request: Request, exc: SQLAlchemyTimeoutError) -> JSONResponse:
        log.warning("no database connection in time for %s %s", request.method, request.url.path)
        return problem_response(
            503, "the server is busy; try again shortly", headers={"Retry-After": RETRY_AFTER}
        )

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return problem_response(
            503,
            "the database is unavailable; try again shortly",
            headers={"Retry-After": RETRY_AFTER},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(500, "the server failed to handle the request")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what every route may answer, as the server does.

    Every error is a problem document (`application/problem+json`); an operation with a
    request body may answer 400 (unparsable) and 413 (too large); one that needs an API token
    may answer 401 and 429 (too many failed authentications). Changes `document` in place.
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ProblemDocument", ProblemDocument.model_json_schema())
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDocument"}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            extra: list[int] = []
            if "requestBody" in operation:
                extra += [400, 413]
            if operation.get("security"):
                extra += [401, 429]
            for status in extra:
                responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
            for status, response in responses.items():
                if status[:1] in "45":
                    response["content"] = problem
    return document


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over a limit with 413.

    JSON endpoints are small, so their body is read here (up to the limit) and replayed to
    the app: a declared Content-Length over the limit is refused before reading, and a chunked
    body is refused as soon as it passes the limit. Path prefixes listed in `streaming` (blob
    uploads) pass through untouched; their routes limit what they receive themselves.
    """

    def __init__(
        self, app: ASGIApp, *, default_limit: int, streaming: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.streaming = streaming

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.streaming):
            await self.app(scope, receive, send)
            return
        limit = self.default_limit
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await self._refuse(scope, receive, send, limit)
                    return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(413, f"the request body is over the limit of {limit} bytes")
        await response(scope, receive, send)
