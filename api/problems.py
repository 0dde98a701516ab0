"""RFC 9457 problem details for every error, validation errors and unknown routes included."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from observability.logs import current_request_id

log = logging.getLogger("takeback.api")
PROBLEM_JSON = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
          413: "Payload too large", 415: "Unsupported media type", 422: "Unprocessable content", 500: "Internal server error", 503: "Service unavailable"}


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (extension members may follow)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str


def _documented(*statuses: int) -> dict:
    return {status: {"model": ProblemDetails, "description": TITLES[status], "content": {PROBLEM_JSON: {}}} for status in statuses}


# Every route may answer these; the OpenAPI document says so, and schema fuzzing holds it to it.
COMMON_RESPONSES = _documented(401, 403, 404, 409, 413, 422, 503)


class Problem(Exception):
    def __init__(self, status: int, detail: str, kind: str | None = None, title: str | None = None, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.detail, self.kind, self.title, self.headers, self.extra = status, detail, kind, title, headers, extra


def problem_response(status: int, detail: str, kind: str | None = None, title: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    body = {
        "type": f"https://takeback.example/problems/{kind or TITLES.get(status, 'error').lower().replace(' ', '-')}",
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    request_id = current_request_id()
    if request_id is not None:
        # The id a caller quotes when it reports the problem (api/request_id.py); set here too because
        # a 500 is answered outside the middleware that echoes it.
        body["request_id"] = request_id
        headers = {**(headers or {}), "X-Request-Id": request_id}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def not_found(what: str) -> Problem:
    return Problem(404, f"{what} not found", "not-found")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, error: Problem):
        return problem_response(error.status, error.detail, error.kind, error.title, error.headers, **error.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in error.errors()][:50]
        return problem_response(422, "the request does not match the schema", "validation-error", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException):
        return problem_response(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        # Answered outside the middleware that sets these on every other answer.
        return problem_response(500, "an unexpected error occurred; it was logged", "internal-error", headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
