"""The HTTP ingress: validates, authenticates, admits, routes to model deployments, and maps
errors to status codes (through :mod:`mmrm.serve.errors`, the one mapping)."""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrm.rm.version import __version__
from mmrm.rm.errors import ConfigError, InvalidInput, LimitExceeded, MmrmError, Overloaded, PayloadTooLarge
from mmrm.rm.media.sources import classify_source, decode_base64, read_data_uri
from mmrm.rm.results import group_result, pair_result
from mmrm.rm.types import ImagePart, Message as ChatMessage, Sample, ScoreResult, TextPart, VideoPart
from mmrm.serve import metrics as m
from mmrm.serve.compat import openrlhf, vllm_classify
from mmrm.serve.config import Limits, ServiceConfig
from mmrm.serve.errors import (
    BODY_TIMEOUT_STATUS, HEADERS_TOO_LARGE_STATUS, NotFound, RateLimited, Timeout, Unauthorized, error_response,
    from_ray, from_wire, install, to_wire,
)
from mmrm.rm.protocol import (
    CompareRequest, CompareResponse, ErrorResponse, GroupResult, ItemResult, JudgeRequest, JudgeResponse, ModelCard,
    ModelList, RankRequest,
    RankResponse, ScoreRequest, ScoreResponse, Usage, new_id,
)

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

log = logging.getLogger("mmrm.serve")

OPEN_ROUTES = {"/healthz"}
_ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           408: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
           429: {"model": ErrorResponse}, 431: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
           504: {"model": ErrorResponse}}


class Admission:
    """mmrm's admission control: at most ``limit`` scoring requests with a complete body at once,
    and at most ``reads`` whose body is still arriving; the rest are refused at once (503 with
    ``Retry-After``) instead of waiting in an unbounded queue."""

    def __init__(self, limit: int, reads: int, retry_after_s: float) -> None:
        self.limit, self.reads, self.retry_after_s = limit, reads, retry_after_s
        self.inflight = 0
        self.reading = 0

    def _refuse(self, what: str, limit: int) -> Overloaded:
        m.REJECTED.labels("overloaded").inc()
        return Overloaded(f"too many {what}; retry later", retry_after=self.retry_after_s, limit=limit)

    def start_reading(self) -> Overloaded | None:
        """Before the body is read: a refusal when every slot is taken now (reading the body would
        not free one) or too many bodies are arriving; else the request counts as reading."""
        if self.inflight >= self.limit:
            return self._refuse("requests in flight", self.limit)
        if self.reading >= self.reads:
            return self._refuse("request bodies arriving at once", self.reads)
        self.reading += 1
        return None

    def done_reading(self) -> None:
        self.reading -= 1

    def enter(self) -> Overloaded | None:
        """Once the body is complete: take a slot, or the refusal when there is none."""
        if self.inflight >= self.limit:
            return self._refuse("requests in flight", self.limit)
        self.inflight += 1
        m.INFLIGHT.set(self.inflight)
        return None

    def leave(self) -> None:
        self.inflight -= 1
        m.INFLIGHT.set(self.inflight)


class BodyGate:
    """ASGI middleware (inside authentication and rate limiting): read the whole request body, then
    admit the request, then hand the app the body.

    * A body over ``max_bytes`` is a 413 before the app parses it (by Content-Length when given,
      else while reading).
    * A body not complete ``timeout_s`` after the request arrived is a 408 (``field: body``,
      ``limit``: the seconds), answered with ``Connection: close``.
    * Admission (``admission``, POST only) counts a request only once its body is complete, and
      until its answer is sent: a client that trickles its body a few bytes a second holds a
      connection (the front proxy's to bound, see k8s/README.md) and one of the
      ``admission.max_body_reads`` reading places, never a slot that complete requests need. A
      request that arrives while every slot is taken is refused at once, before its body is read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, admission: Admission) -> None:
        self.app, self.max_bytes, self.timeout_s, self.admission = app, max_bytes, timeout_s, admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = PayloadTooLarge("request body is too large", field="body", limit=self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(too_big)(scope, receive, send)
        scoring = scope.get("method") == "POST"
        if scoring:
            refused = self.admission.start_reading()
            if refused is not None:
                return await error_response(refused)(scope, receive, send)
        try:
            data = await self._read(scope, receive, send)
        finally:
            if scoring:
                self.admission.done_reading()
        if data is None:  # refused (too big, too slow) or the client left: answered already
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        if scoring:
            refused = self.admission.enter()
            if refused is not None:
                return await error_response(refused)(scope, receive, send)
        try:
            await self.app(scope, replay, send)
        finally:
            if scoring:
                self.admission.leave()

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once a refusal has been answered."""
        too_big = PayloadTooLarge("request body is too large", field="body", limit=self.max_bytes)
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.timeout_s):
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        # Nobody will read an answer; one is sent so the middleware above has a response.
                        gone = InvalidInput("the client disconnected before the body was complete", field="body")
                        await error_response(gone)(scope, receive, send)
                        return None
                    body = msg.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        await error_response(too_big)(scope, receive, send)
                        return None
                    chunks.append(body)
                    more = msg.get("more_body", False)
        except TimeoutError:
            m.REJECTED.labels("timeout").inc()
            slow = Timeout(f"the request body did not arrive within {self.timeout_s} s ({size} bytes came)",
                           field="body", limit=self.timeout_s)
            await error_response(slow, status=BODY_TIMEOUT_STATUS)(scope, receive, send)
            return None
        return b"".join(chunks)


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self.state.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.state[key] = (tokens - 1, now)
            return 0.0
        self.state[key] = (tokens, now)
        return (1 - tokens) / self.rate


def _parts(messages: Sequence[ChatMessage]) -> Iterator[Any]:
    for msg in messages:
        if isinstance(msg.content, str):
            yield TextPart(text=msg.content)
        else:
            yield from msg.content


def _inline_image_pixels(src: str, max_bytes: int) -> int:
    """Width x height from the header of an inline image (a base64 data URI, or bare base64, as the
    media module's one classifier reads the string), without decoding any pixel; 0 when the image
    is not inline or its header cannot be read (the replica then refuses it as that item's failure)."""
    try:
        source = classify_source(src)
        if source.kind == "data_uri":
            data = read_data_uri(source.text, max_bytes=max_bytes, field="image_url").data
        elif source.kind == "base64":
            data = decode_base64(source.text, max_bytes=max_bytes, field="image_url")
        else:
            return 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header only
                w, h = im.size
    except Exception:  # noqa: BLE001 - not an image this probe can read: the replica judges it
        return 0
    return int(w) * int(h)


class RequestCost:
    """What a request asks the replicas to do, counted at the ingress before any work starts:
    samples, characters of text and pixels of inline images, each summed over the samples scored
    (a GRPO group's prompt is encoded with every response, so it counts once per response)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def check(self, samples: Sequence[Sample | MmrmError], field: str, *, what: str, repeat: int = 1) -> None:
        """Raise :class:`LimitExceeded` (422) naming ``field`` and the limit when the request is over
        one. ``repeat``: how many times each sample is run (2 for a judge's two orders of a pair)."""
        lim = self.limits
        n = len(samples) * repeat
        if n > lim.max_samples:
            raise LimitExceeded(f"the request scores {n} samples ({what}); limits.max_samples is {lim.max_samples}",
                                field=field, limit=lim.max_samples)
        chars = pixels = 0
        seen: dict[str, int] = {}  # one probe per distinct image (a group's prompt image is shared)
        for s in samples:
            if not isinstance(s, Sample):
                continue
            for part in _parts([*s.prompt, s.response]):
                if isinstance(part, TextPart):
                    chars += len(part.text) * repeat
                    continue
                sources = [part.image_url.url] if isinstance(part, ImagePart) else (
                    part.video if isinstance(part, VideoPart) and isinstance(part.video, list) else [])
                for src in sources:
                    if src not in seen:
                        seen[src] = _inline_image_pixels(src, lim.media.max_bytes)
                    pixels += seen[src] * repeat
            if chars > lim.max_text_chars:
                raise LimitExceeded(f"the request's text is over {lim.max_text_chars} characters, summed over the "
                                    f"samples it scores ({what})", field=field, limit=lim.max_text_chars)
            if pixels > lim.max_request_pixels:
                raise LimitExceeded(f"the request's images are over {lim.max_request_pixels} pixels, summed over the "
                                    f"samples it scores ({what})", field=field, limit=lim.max_request_pixels)


def build_fastapi(cfg: ServiceConfig, handles: dict[str, DeploymentHandle],
                  judges: dict[str, DeploymentHandle] | None = None) -> FastAPI:
    """The FastAPI app. ``handles`` / ``judges`` map names to Serve handles of the reward-model and
    judge deployments."""
    token: str | None = None
    if cfg.auth.token_env:
        token = os.environ.get(cfg.auth.token_env)
        if not token:
            # Never serve unprotected when protection was asked for.
            raise ConfigError(f"auth.token_env names {cfg.auth.token_env!r} but that variable is empty or unset",
                              field="auth.token_env")
    bucket = TokenBucket(cfg.auth.rate_limit.requests_per_s, cfg.auth.rate_limit.burst) if cfg.auth.rate_limit else None
    admission = Admission(cfg.admission.max_inflight, cfg.admission.body_reads, cfg.admission.retry_after_s)
    limits = cfg.limits
    timeout = limits.request_timeout_s
    judges = judges or {}
    known_paths: set[str] = set()  # filled once the routes exist (metric labels come only from here)
    openrlhf.warn_if_error_policy(cfg.compat.openrlhf.on_invalid)
    vllm_classify.warn_if_error_policy(cfg.compat.classify.on_invalid)

    app = FastAPI(title="mmrm", version=__version__,
                  description="Multimodal reward models and judges: score, compare, rank, judge.")
    install(app)
    # Added first, so it runs inside `gate` below: a request is authenticated and rate-limited on
    # its headers, then its body is read (by a deadline), and only then is it admitted.
    app.add_middleware(BodyGate, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s, admission=admission)

    @app.middleware("http")
    async def gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Serve's proxy passes the caller's X-Request-Id through (or one it made up when none came).
        rid = (request.headers.get("x-request-id") or "")[:128] or uuid.uuid4().hex
        request.state.request_id = rid
        # Serve's HTTP proxy (uvicorn with httptools) caps no header size, so mmrm does, before it
        # compares a token or keys a rate-limit bucket on one (see RELIABILITY.md).
        header_bytes = sum(len(k) + len(v) for k, v in request.scope.get("headers") or [])
        if header_bytes > limits.max_header_bytes:
            m.ERRORS.labels("other", "payload_too_large").inc()
            big = PayloadTooLarge(f"the request headers are {header_bytes} bytes", field="headers",
                                  limit=limits.max_header_bytes)
            return error_response(big, rid, status=HEADERS_TOO_LARGE_STATUS)
        # Paths relative to the app's route prefix (Serve mounts an app under root_path).
        root = request.scope.get("root_path", "")
        path = request.url.path
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        needs_auth = (token is not None and path not in OPEN_ROUTES and path not in cfg.auth.open_routes
                      and (path != "/metrics" or cfg.auth.protect_metrics))
        scheme, _, cred = request.headers.get("authorization", "").partition(" ")
        if needs_auth:
            given, want = cred.encode(), token.encode()  # type: ignore[union-attr]
            # A credential of another length cannot match: refused without comparing (the length
            # of the token is no secret; its bytes are compared in constant time).
            if scheme.lower() != "bearer" or len(given) != len(want) or not hmac.compare_digest(given, want):
                # A route template or "other": never the caller's raw path (unbounded label values).
                m.ERRORS.labels(path if path in known_paths else "other", "unauthorized").inc()
                return error_response(Unauthorized("missing or wrong bearer token", field="Authorization"), rid)
        if bucket is not None and path not in OPEN_ROUTES and path != "/metrics":  # scrapers are not rate-limited
            # One bucket per credential (not per spelling of the header: "bearer X" and "Bearer X" are the
            # same caller); without auth, per client address (a made-up header must not buy a new bucket).
            key = "token:" + cred if token is not None else "addr:" + (request.client.host if request.client else "")
            wait = bucket.take(key)
            if wait:
                m.REJECTED.labels("rate_limited").inc()
                return error_response(RateLimited("rate limit exceeded", retry_after=wait,
                                                  limit=cfg.auth.rate_limit.requests_per_s), rid)  # type: ignore[union-attr]
        # Admission happens in BodyGate, once the body is complete.
        response = await call_next(request)
        # Ray Serve's proxy echoes X-Request-Id itself (the caller's, or the one it generated and
        # passed in to us), so it is not set again here.
        return response

    def handle(name: str) -> DeploymentHandle:
        if name not in handles:
            raise NotFound(f"unknown model {name!r}; see GET /v1/models", field="model", limit=sorted(handles))
        return handles[name]

    def deadline() -> float:
        """The request deadline as a wall-clock time, for the replicas (they stop a request's
        remaining work once it passes; time.time() so that it means the same in every process)."""
        return time.time() + timeout

    async def replica_call(route: str, name: str, what: str, work: Awaitable[Any], *, record: bool = True) -> Any:
        """Await a replica with the request deadline. Ray/Serve failures that mean "retry soon" (a
        dead replica, Serve's own queue full) become typed errors HERE: Serve registers its own
        FastAPI handlers for some of them (plain-text 503 without Retry-After), which would bypass
        the one mapping in mmrm.serve.errors.

        After a 504, or when this request is cancelled (Serve cancels it when the client
        disconnects), the replica call is cancelled too: Ray Serve 2.60 does not do that by itself
        (``DeploymentResponse.__await__`` re-raises the CancelledError of the awaiting task without
        calling ``cancel()``, ray/serve/handle.py), so the replica would compute for nobody.
        ``cancel()`` makes Ray cancel the replica's task, which raises CancelledError inside it."""
        t0 = time.perf_counter()
        code = "200"

        def abandon() -> None:
            cancel = getattr(work, "cancel", None)  # a DeploymentResponse (or a gather of them)
            if cancel is not None:
                cancel()

        try:
            out = await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            code = "504"
            abandon()
            raise Timeout(f"{what} did not finish within {timeout} s", field="request", limit=timeout) from None
        except asyncio.CancelledError:
            code = "499"  # the client went away (nginx's code for it)
            abandon()
            raise
        except MmrmError as e:
            code = "4xx"
            m.ERRORS.labels(route, e.kind).inc()
            raise
        except Exception as e:
            mapped = from_ray(e)
            if mapped is None:
                code = "500"
                raise  # a server fault: the 500 handler logs it
            code = "503"
            m.ERRORS.labels(route, mapped.kind).inc()
            raise mapped from None
        finally:
            if record:
                m.LATENCY.labels(route, name).observe(time.perf_counter() - t0)
                m.REQUESTS.labels(route, name, code).inc()
        if isinstance(out, dict) and "error" in out:  # a request-level error the replica returned as data
            err = from_wire(out["error"])
            m.ERRORS.labels(route, err.kind).inc()
            raise err
        return out

    # ------------------------------------------------------------------------------------------
    # The one scoring pipeline. Every scoring route (versioned and compat) is: convert its body to
    # flat items (a Sample, or the item's own error when the route could not convert it) with one
    # field path each -> check counts -> one replica call -> per-item results (a failed item is its
    # own invalid result; the rest score in the same forwards) -> metrics -> the route's response.

    def check_count(n: int, field: str) -> None:
        if n > cfg.limits.max_items:
            raise InvalidInput(f"{n} {field} in one request", field=field, limit=cfg.limits.max_items)

    cost = RequestCost(limits)

    async def score_flat(route: str, model: str, items: list[Sample | MmrmError], fields: list[str], rid: str,
                         groups: list[int] | None = None, *, field: str, what: str) -> list[ScoreResult]:
        """Score flat samples on one model; ``field``/``what`` name the request's collection for the
        cost limits (``groups``, "the responses of all groups")."""
        if not items:
            return []
        h = handle(model)
        # Off the loop: reading inline images' headers decodes their base64 (up to max_body_bytes).
        await asyncio.to_thread(cost.check, items, field, what=what)
        wire = [it.model_dump(mode="json") if isinstance(it, Sample) else to_wire(it) for it in items]
        out = await replica_call(route, model, "scoring", h.score.remote(wire, rid, fields, groups, deadline()))
        for b in out["batch_sizes"]:
            m.BATCH_SIZE.labels(model).observe(b)
        m.QUEUE_DEPTH.labels(model).set(out["queue_depth"])
        return [ScoreResult.model_validate(r) for r in out["results"]]

    def finish(route: str, model: str, results: list[ScoreResult], on_item_error: str = "return") -> Usage:
        """Metrics for the results; with ``on_item_error="fail"`` the first failed item fails the request."""
        for r in results:
            m.ITEMS.labels(route, model, "ok" if r.ok else "invalid").inc()
            if r.ok:
                m.SCORES.labels(route, model).observe(float(r.value))  # type: ignore[arg-type]
            else:
                m.ERRORS.labels(route, r.error_kind or "error").inc()
        bad = [r for r in results if not r.ok]
        if bad and on_item_error == "fail":
            err = bad[0].error()
            if isinstance(err, InvalidInput):
                raise err
            raise InvalidInput(str(err), field=getattr(err, "field", None), limit=getattr(err, "limit", None))
        return Usage(items=len(results), invalid=len(bad))

    def items(results: list[ScoreResult]) -> list[ItemResult]:
        return [ItemResult.of(i, r) for i, r in enumerate(results)]

    def caller_id(request: Request, prefix: str) -> str:
        return new_id(prefix, request.state.request_id)

    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS, summary="Pointwise rewards")
    async def score(req: ScoreRequest, request: Request) -> ScoreResponse:
        check_count(len(req.items), "items")
        res = await score_flat("/v1/score", req.model, list(req.items), [f"items[{i}]" for i in range(len(req.items))],
                               request.state.request_id, field="items", what="one per item")
        usage = finish("/v1/score", req.model, res, req.on_item_error)
        return ScoreResponse(id=caller_id(request, "score"), model=req.model, data=items(res), usage=usage)

    @app.post("/v1/compare", response_model=CompareResponse, responses=_ERRORS, summary="Pairwise P(A>B)")
    async def compare(req: CompareRequest, request: Request) -> CompareResponse:
        check_count(len(req.pairs), "pairs")
        samples: list[Sample | MmrmError] = []
        fields: list[str] = []
        for i, p in enumerate(req.pairs):
            samples += p.samples()
            fields += [f"pairs[{i}]", f"pairs[{i}]"]  # pair_result names the failing side
        flat = await score_flat("/v1/compare", req.model, samples, fields, request.state.request_id,
                                field="pairs", what="pairs x 2 responses")
        res = [pair_result(flat[2 * k], flat[2 * k + 1]) for k in range(len(req.pairs))]
        usage = finish("/v1/compare", req.model, res, req.on_item_error)
        return CompareResponse(id=caller_id(request, "compare"), model=req.model, data=items(res), usage=usage)

    @app.post("/v1/rank", response_model=RankResponse, responses=_ERRORS, summary="GRPO groups: raw + normalized")
    async def rank(req: RankRequest, request: Request) -> RankResponse:
        check_count(len(req.groups), "groups")
        if req.model not in handles and req.model in judges:
            return await judge_rank(req, request)
        samples: list[Sample | MmrmError] = []
        fields, sizes = [], []
        for i, g in enumerate(req.groups):
            if len(g.responses) > cfg.limits.max_group_size:
                raise InvalidInput("group too large", field=f"groups[{i}].responses", limit=cfg.limits.max_group_size)
            samples += g.samples()
            fields += [f"groups[{i}].responses[{j}]" for j in range(len(g.responses))]
            sizes.append(len(g.responses))
        flat = await score_flat("/v1/rank", req.model, samples, fields, request.state.request_id, groups=sizes,
                                field="groups", what="the responses of all groups")
        usage = finish("/v1/rank", req.model, flat, req.on_item_error)
        data, k = [], 0
        for i, n in enumerate(sizes):
            part = flat[k:k + n]
            k += n
            data.append(GroupResult(index=i, results=items(part), normalized=group_result(part, eps=req.eps)))
        return RankResponse(id=caller_id(request, "rank"), model=req.model, data=data, usage=usage)

    async def judge_rank(req: RankRequest, request: Request) -> RankResponse:
        """/v1/rank by a served judge: the judge ranks each group itself (its rank_strategy)."""
        for i, g in enumerate(req.groups):
            if len(g.responses) > cfg.limits.max_group_size:
                raise InvalidInput("group too large", field=f"groups[{i}].responses", limit=cfg.limits.max_group_size)
        await asyncio.to_thread(cost.check, [s for g in req.groups for s in g.samples()], "groups",
                                what="the responses of all groups")
        out = await replica_call("/v1/rank", req.model, "ranking",
                                 judges[req.model].rank.remote(req.model_dump(mode="json"), request.state.request_id, deadline()))
        per = [[ScoreResult.model_validate(r) for r in g["results"]] for g in out["groups"]]
        usage = finish("/v1/rank", req.model, [r for g in per for r in g], req.on_item_error)
        data = [GroupResult(index=i, results=items(g), normalized=out["groups"][i]["normalized"]) for i, g in enumerate(per)]
        return RankResponse(id=caller_id(request, "rank"), model=req.model, data=data, usage=usage)

    @app.post("/v1/judge", response_model=JudgeResponse, responses=_ERRORS, summary="Generative judge")
    async def judge(req: JudgeRequest, request: Request) -> JudgeResponse:
        n = len(req.items or req.pairs or [])
        check_count(n, "items" if req.items is not None else "pairs")
        if req.judge not in judges:
            raise NotFound(f"unknown judge {req.judge!r}; see GET /v1/models", field="judge", limit=sorted(judges))
        if req.pairs is not None:  # each pair is judged in both orders, each query with both responses
            await asyncio.to_thread(cost.check, [s for p in req.pairs for s in p.samples()], "pairs",
                                    what="pairs x 2 responses x 2 orders", repeat=2)
        else:
            await asyncio.to_thread(cost.check, list(req.items or []), "items", what="one per item")
        out = await replica_call("/v1/judge", req.judge, "judging",
                                 judges[req.judge].judge.remote(req.model_dump(mode="json"), request.state.request_id,
                                                                deadline()))
        res = [ScoreResult.model_validate(r) for r in out["results"]]
        usage = finish("/v1/judge", req.judge, res, req.on_item_error)
        return JudgeResponse(id=caller_id(request, "judge"), model=req.judge, data=items(res), usage=usage)

    def default_model(name: str | None) -> str:
        if name:
            return name
        if not handles:
            raise NotFound("no reward model is served", field="model")
        return next(iter(handles))

    @app.post(openrlhf.ROUTE, response_model=openrlhf.RewardResponse, response_model_exclude_none=True, responses=_ERRORS,
              summary="OpenRLHF remote reward protocol")
    async def get_reward(req: openrlhf.RewardRequest, request: Request) -> dict[str, Any]:
        """OpenRLHF's ``--reward.remote_url`` body (``query``/``prompts``/``labels``, plus mmrm's ``images``).

        A query that cannot be scored follows ``compat.openrlhf.on_invalid``: ``error`` fails the
        request (OpenRLHF 0.11.2 then leaves the sample without a reward and the step fails);
        ``fill`` (recommended) answers ``fill_value``, flagged in ``extra_logs["mmrm_invalid"]``.
        Either way it is logged with its field and limit and counted in ``mmrm_errors_total``
        (see :mod:`mmrm.serve.compat.openrlhf`)."""
        opts = cfg.compat.openrlhf
        model = default_model(opts.model)
        check_count(len(req.query), "query")
        samples = openrlhf.to_samples(req)
        res = await score_flat(openrlhf.ROUTE, model, samples, [f"query[{i}]" for i in range(len(samples))],
                               request.state.request_id, field="query", what="one per query")
        finish(openrlhf.ROUTE, model, res)
        return openrlhf.to_response(res, scores=opts.scores, on_invalid=opts.on_invalid, fill_value=opts.fill_value,
                                    request_id=request.state.request_id)

    @app.post("/classify", responses=_ERRORS, summary="vLLM /classify shape (verl's reward-model path)")
    async def classify(body: dict[str, Any], request: Request) -> dict[str, Any]:
        """vLLM's ``/classify`` request and response; the reward is ``data[i].probs[0]``.

        verl 0.9.1 (``verl/experimental/reward_loop/reward_loop.py``,
        ``RewardLoopWorker.compute_score_disrm`` / ``_post_request``) sends one rendered sample per
        request, reads ``data[-1]["probs"][-1]``, raises at once on a 4xx and after 16 retries on a
        5xx, and nothing above it catches: the only answer its step survives is a 200 with a number.
        So an input that cannot be scored follows ``compat.classify.on_invalid``: ``error``
        (default, as vLLM does) fails the request (422 for input errors) and with it verl's step;
        ``fill`` (recommended for verl) answers ``fill_value`` for that item, its record flagged
        with an extra ``error`` key. Either way it is logged with its field and limit and counted
        in ``mmrm_errors_total``. Every error this handler answers has vLLM 0.32's
        ``ErrorResponse`` shape (``type``, ``code``, ``param``) plus mmrm's ``kind``/``field``/
        ``limit`` (:func:`mmrm.serve.compat.vllm_classify.error_body`)."""
        opts = cfg.compat.classify
        try:
            req = vllm_classify.parse_request(body)
            fallback = cfg.compat.classify_default_model
            name = req.model if (req.model in handles or not fallback) else fallback
            model = default_model(name or fallback)
            samples = vllm_classify.to_samples(req)
            check_count(len(samples), "input")
            res = await score_flat("/classify", model, samples,
                                   [vllm_classify.item_field(req, i) for i in range(len(samples))],
                                   request.state.request_id, field=vllm_classify.item_field(req, 0).split("[")[0],
                                   what="one per input")
            finish("/classify", model, res)
            return vllm_classify.to_response(req, res, model=model, request_id=request.state.request_id,
                                             on_invalid=opts.on_invalid, fill_value=opts.fill_value,
                                             trace_id=request.state.request_id)
        except Exception as e:  # noqa: BLE001 - this route answers every error in vLLM's shape
            if isinstance(e, MmrmError):
                err = e
            else:  # a server fault, logged as the app's 500 handler would
                log.exception("internal error (request %s)", request.state.request_id)
                err = MmrmError("internal server error")
                err.kind = "internal"
            mapped = error_response(err, request.state.request_id)  # the one status mapping, and its headers
            keep = {k: v for k, v in mapped.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
            return JSONResponse(vllm_classify.error_body(err, mapped.status_code), status_code=mapped.status_code,
                                headers=keep)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> ModelList:
        cards = await replica_call("/v1/models", "", "listing models", record=False,
                                   work=asyncio.gather(*(h.info.remote() for h in [*handles.values(), *judges.values()])))
        return ModelList(data=[ModelCard(**c) for c in cards])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness of the ingress (no auth)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=_ERRORS)
    async def readyz() -> JSONResponse:
        """Ready when every model has a replica that loaded and scored its warm-up sample."""
        try:
            await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in [*handles.values(), *judges.values()])), 5)
        except Exception as e:  # not ready, whatever the cause: readiness must answer, not fail
            return JSONResponse({"status": "not ready", "reason": type(e).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "models": sorted(handles), "judges": sorted(judges)})

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: {"model": ErrorResponse}},
             summary="Prometheus metrics (text exposition format)")
    async def metrics() -> Response:
        return Response(m.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    known_paths.update(r.path for r in app.routes if isinstance(getattr(r, "path", None), str))
    app.state.handles = handles
    app.state.config = cfg
    return app
