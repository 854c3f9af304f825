"""The ONE place where errors become HTTP status codes and bodies.

Typed errors from anywhere in mmrm (media, encoding, limits, overload, auth) and from Ray (a dead
replica, Serve's own back-pressure) map to a status here. Anything not listed is a server fault:
it is logged with its traceback and answered 500 with a generic message, never disguised as 4xx.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mmrm.rm import errors as e
from mmrm.rm.protocol import error_type

log = logging.getLogger("mmrm.serve")


class Unauthorized(e.MmrmError):
    kind = "unauthorized"


class NotFound(e.MmrmError):
    kind = "not_found"


class RateLimited(e.Overloaded):
    kind = "rate_limited"


class Timeout(e.MmrmError):
    kind = "timeout"


class ReplicaUnavailable(e.Overloaded):
    kind = "replica_unavailable"


# Order matters: the first matching class wins (subclasses before their bases).
_STATUS: list[tuple[type[Exception], int]] = [
    (Unauthorized, 401),
    (NotFound, 404),
    (RateLimited, 429),
    (e.Overloaded, 503),
    (Timeout, 504),
    (e.PayloadTooLarge, 413),
    (e.InvalidInput, 422),
    (e.BackendError, 502),
    (e.ConfigError, 500),
]


def status_for(exc: Exception) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(d: dict[str, Any], status: int) -> dict[str, Any]:
    """``{"error": ...}``: mmrm's kind/message/field/limit plus vLLM's ``type`` and ``code``, so every
    error body also validates as vLLM's own ErrorResponse (clients written for vLLM read it)."""
    return {"error": {**d, "type": error_type(status), "code": status}}


#: Two refusals of the ingress whose kind is shared with another status (the kind vocabulary,
#: :data:`mmrm.rm.errors.ErrorKind`, is fixed, and a subclass with the same kind would capture that
#: kind when :func:`from_wire` rebuilds an error): a body that did not arrive within
#: ``limits.body_timeout_s`` (kind ``timeout``) and headers over ``limits.max_header_bytes``
#: (kind ``payload_too_large``). They pass these to :func:`error_response` as ``status``.
BODY_TIMEOUT_STATUS = 408
HEADERS_TOO_LARGE_STATUS = 431


def error_response(exc: e.MmrmError, request_id: str | None = None, *, status: int | None = None) -> JSONResponse:
    """The response for a typed error: its status from the mapping above (or ``status``, one of the
    two overrides above), the envelope, and the headers the status needs."""
    status = status or status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, e.Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (BODY_TIMEOUT_STATUS, HEADERS_TOO_LARGE_STATUS):
        # The rest of the request (a trickling body, oversized headers) is not read, so the
        # connection cannot carry another request: the HTTP server closes it after this answer.
        headers["Connection"] = "close"
    return JSONResponse(error_body(exc.to_dict(), status), status_code=status, headers=headers)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    """('body', 'items', 0, 'prompt') -> 'items[0].prompt'."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: RequestValidationError) -> e.InvalidInput:
    errs = exc.errors()
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    field = _loc_to_field(tuple(first.get("loc", ())))
    msg = f"{first.get('msg', 'invalid value')}"
    if len(errs) > 1:
        msg += f" (and {len(errs) - 1} more problems)"
    limit = (first.get("ctx") or {}).get("limit_value") or (first.get("ctx") or {}).get("max_length") or \
        (first.get("ctx") or {}).get("min_length")
    return e.InvalidInput(msg, field=field, limit=limit)


def from_ray(exc: BaseException) -> e.MmrmError | None:
    """Ray/Serve failures that mean 'try again soon', not a server bug."""
    # By class name along the MRO (no Ray import here): subclasses count, and so does Ray's
    # RayTaskError(<cause>) wrapper, which subclasses the class of the error it carries.
    names = {c.__name__ for c in type(exc).__mro__}
    if "BackPressureError" in names:
        return e.Overloaded("the model's queue is full; retry later", retry_after=1.0)
    if names & {"RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError"}:
        return ReplicaUnavailable("a model replica became unavailable during the request; retry", retry_after=1.0)
    return None


def install(app: Any) -> None:
    """Register the exception handlers on a FastAPI app."""

    @app.exception_handler(e.MmrmError)
    async def _mmrm(request: Request, exc: e.MmrmError) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # Raised by FastAPI/Starlette themselves (a body that is not UTF-8 or cannot be parsed: 400,
        # an unknown route: 404, a wrong method: 405): same envelope as every other error.
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")  # a fixed vocabulary
        body = {"kind": kind, "message": str(exc.detail),
                "field": "body" if exc.status_code == 400 else None, "limit": None}
        return JSONResponse(error_body(body, exc.status_code), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), getattr(request.state, "request_id", None))

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception) -> JSONResponse:
        mapped = from_ray(exc)
        rid = getattr(request.state, "request_id", None)
        if mapped is not None:
            return error_response(mapped, rid)
        log.exception("internal error (request %s)", rid)
        return JSONResponse(error_body({"kind": "internal", "message": "internal server error", "field": None,
                                        "limit": None}, 500), status_code=500)


def to_wire(exc: e.MmrmError) -> dict[str, Any]:
    """A typed error as data, so replicas return input errors instead of raising them (a raised
    error is logged by Ray with a traceback as if it were a server fault)."""
    d = exc.to_dict()
    if isinstance(exc, e.Overloaded):
        d["retry_after"] = exc.retry_after
    return {"error": d}


def from_wire(d: dict[str, Any]) -> e.MmrmError:
    return e.error_from(d.get("kind"), d.get("message", "error"), field=d.get("field"), limit=d.get("limit"),
                        retry_after=d.get("retry_after"))
