"""What a client sees when a request fails: a status code and a JSON body ``{"error": CODE, "detail": MESSAGE}``,
never a stack trace. The full traceback of an unexpected error goes to the server's log only."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

__all__ = ["ServiceError", "error_response", "install_error_handlers"]


class ServiceError(Exception):
    """A request the service refuses or cannot serve, with the status and the short code the client gets.

    Attributes:
        status: the HTTP status (4xx: the client's request; 503: the service cannot serve it now).
        code: a stable machine-readable name (``too_large``, ``unsupported_type``, ``not_configured``, ...).
        detail: one sentence a user can act on.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# Starlette's own refusals (unknown path, wrong method) as codes of this service's error body.
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large"}


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through :func:`error_response`."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, error.code, error.detail, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, _HTTP_CODES.get(error.status_code, "http_error"), str(error.detail),
                              getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # The first problem, named by its field: "k: Input should be less than or equal to 100".
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "form"))
        return error_response(422, "invalid_request", f"{field}: {first.get('msg')}" if field else first.get("msg"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed on this request; its log says why")
