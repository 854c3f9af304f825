"""The ``openai`` judge backend: any OpenAI-compatible chat server (vLLM, SGLang, hosted APIs).

This is how judges use vLLM (out of process, in its own environment). It speaks plain
``POST {base_url}/chat/completions`` over httpx, with:

* one HTTP connection pool for the backend's lifetime (an :class:`httpx.AsyncClient` on the
  backend's own event-loop thread, started by the first request); :meth:`OpenAIJudgeBackend.close`
  or a ``with`` block ends both;
* concurrency: N requests go out concurrently, at most ``max_concurrency`` in flight (across
  concurrent calls too);
* timeouts (``timeout_s`` per request) and retries by the HTTP client's one policy
  (:mod:`mmrm.client.retry`): 429, 502, 503 and transport errors, honouring ``Retry-After``, at most
  ``max_retries`` retries within ``max_retry_time_s``; any other failure (a 500, a 504, a 4xx) is
  that item's error;
* bounded cost: ``max_tokens_cap`` caps every request's completion tokens, and the judge's
  ``max_queries`` caps requests per call;
* logprobs: ``max_tokens=1``, ``logprobs=true``, ``top_logprobs=k``. Servers return at most a
  limited number of top logprobs (OpenAI: 20; vLLM: its ``--max-logprobs``, default 20), so
  ``top_logprobs`` is at most 20 and a label outside the top-k counts as 0 (the reported mass is
  then a lower bound);
* prefill: with ``prefill="vllm"`` the assistant turn is continued via vLLM's
  ``continue_final_message`` extension (also accepted by SGLang); with ``prefill="none"`` (hosted
  APIs) there is none, the logprob path reads the FIRST generated token and the text path requires
  the reply to start with ``<answer>``;
* structured output: ``response_format={"type": "json_schema", ...}``;
* stop strings: ``stop=[...]``; the string that ended a reply is read from vLLM's ``stop_reason``
  (servers that do not report it leave :attr:`GenReply.stop` unset);
* images: every media part is loaded through :class:`mmrm.rm.media.MediaLoader` (its limits and
  allowed sources apply here, not the server's) and sent as a PNG data URI ``image_url`` part.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmrm.client.errors import ServiceError
from mmrm.client.retry import RetryPolicy, parse_retry_after
from mmrm.judges.backends.base import GenReply, GenRequest, LabelReply, LabelRequest
from mmrm.rm.errors import BackendError, ConfigError, MmrmError
from mmrm.rm.types import ImagePart, Message, TextPart, VideoPart

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The most top logprobs OpenAI's API returns, and vLLM's default ``--max-logprobs``.
TOP_LOGPROBS_LIMIT = 20


class OpenAIBackendConfig(BaseModel):
    """Connection and cost settings of an OpenAI-compatible judge server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="API root including /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(min_length=1, description="Model name as the server knows it.")
    api_key_env: str | None = Field(default=None, description="Name of the environment variable holding the API key.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries on transport errors, 429, 502 and 503 (mmrm.client.retry).")
    max_retry_time_s: float = Field(
        default=60.0, ge=0, description="No retry starts later than this many seconds after the first attempt "
        "(a Retry-After past it ends the retries).")
    max_concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight at once.")
    top_logprobs: int = Field(default=TOP_LOGPROBS_LIMIT, ge=1, le=TOP_LOGPROBS_LIMIT, description="Top tokens read at the verdict position.")
    max_tokens_cap: int = Field(default=512, ge=1, description="Hard cap on completion tokens of any request.")
    prefill: Literal["vllm", "none"] = Field(default="vllm", description="How to prefill the assistant turn.")
    logprobs: bool = Field(default=True, description="The server returns token logprobs.")
    json_schema: bool = Field(default=True, description="The server supports response_format json_schema.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra fields merged into every request body.")


class _TopLogprob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str
    logprob: float


class _TokenLogprob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str
    logprob: float
    top_logprobs: list[_TopLogprob] = Field(default_factory=list)


class _Logprobs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: list[_TokenLogprob] | None = None


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: _Msg
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string (or token id) that ended generation
    logprobs: _Logprobs | None = None


class _Completion(BaseModel):
    """The part of a chat completion response the judge reads (validated at the boundary)."""

    model_config = ConfigDict(extra="ignore")
    choices: list[_Choice] = Field(min_length=1)
    usage: dict[str, Any] | None = None


class _LoopThread:
    """A private asyncio event loop on a daemon thread: the home of a backend's one HTTP client.

    The judge calls its backend synchronously, from any thread (a Serve replica's worker threads, an
    RL loop, an eval runner); an :class:`httpx.AsyncClient` and its connection pool belong to one
    event loop, so they live here and every call's coroutine is submitted to this loop.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mmrm-openai-judge", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:  # waiting on our own loop would never return
            coro.close()
            raise RuntimeError("an OpenAIJudgeBackend call cannot be made from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


#: The settings' defaults, read from :class:`OpenAIBackendConfig` (the one copy of them).
_DEFAULT = {name: f.default for name, f in OpenAIBackendConfig.model_fields.items()}


class OpenAIJudgeBackend:
    """Judge backend for an OpenAI-compatible server. See the module docstring for the details.

    Args:
        model: the model name as the server knows it.
        base_url, api_key_env, timeout_s, max_retries, max_retry_time_s, max_concurrency,
            top_logprobs, max_tokens_cap, prefill, logprobs, json_schema, extra_body: the fields of
            :class:`OpenAIBackendConfig` (validated by it; their descriptions are the reference).
        media_policy: limits and allowed sources for media in judged conversations.
        transport: an httpx async transport (tests, proxies).

    One connection pool serves every call for the backend's lifetime; :meth:`close` it when done
    (or use the backend as a context manager).

    >>> backend = OpenAIJudgeBackend("judge-7b", base_url="http://127.0.0.1:8001/v1", max_concurrency=16)
    >>> backend.config.max_concurrency, backend.config.prefill
    (16, 'vllm')
    >>> backend.close()
    """

    engine = "openai"
    dtype = None

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | None = _DEFAULT["api_key_env"],
        timeout_s: float = _DEFAULT["timeout_s"],
        max_retries: int = _DEFAULT["max_retries"],
        max_retry_time_s: float = _DEFAULT["max_retry_time_s"],
        max_concurrency: int = _DEFAULT["max_concurrency"],
        top_logprobs: int = _DEFAULT["top_logprobs"],
        max_tokens_cap: int = _DEFAULT["max_tokens_cap"],
        prefill: Literal["vllm", "none"] = _DEFAULT["prefill"],
        logprobs: bool = _DEFAULT["logprobs"],
        json_schema: bool = _DEFAULT["json_schema"],
        extra_body: dict[str, Any] | None = None,
        media_policy: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        config = OpenAIBackendConfig(
            model=model, base_url=base_url, api_key_env=api_key_env, timeout_s=timeout_s, max_retries=max_retries,
            max_retry_time_s=max_retry_time_s, max_concurrency=max_concurrency, top_logprobs=top_logprobs,
            max_tokens_cap=max_tokens_cap, prefill=prefill, logprobs=logprobs, json_schema=json_schema,
            extra_body=extra_body or {})
        self.config = config
        self.scorer_id = config.model
        self.supports_logprobs = config.logprobs
        self.supports_json_schema = config.json_schema
        self.supports_prefill = config.prefill != "none"
        self.retry_policy = RetryPolicy(max_retries=config.max_retries, max_retry_time=config.max_retry_time_s)
        self._media_policy = media_policy
        self._media: Any = None
        self._transport = transport
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._http: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._closed = False
        self.calls = 0  # HTTP requests issued (incl. retries): lets callers and tests see the cost
        self.peak_in_flight = 0  # most requests in flight at once (shows requests really are concurrent)
        self._in_flight = 0

    # ----------------------------------------------------------------------------------------------
    # Lifetime: one HTTP client, on one event loop, for every call

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError("this OpenAIJudgeBackend is closed")
            if self._loop is None:
                self._loop = _LoopThread()
                self._loop.run(self._open())
            loop = self._loop
        return loop.run(make())

    async def _open(self) -> None:
        c = self.config
        # The pool keeps as many connections as may be in flight, so none is reopened between calls.
        limits = httpx.Limits(max_connections=c.max_concurrency, max_keepalive_connections=c.max_concurrency)
        self._http = httpx.AsyncClient(base_url=c.base_url, timeout=httpx.Timeout(c.timeout_s), limits=limits,
                                       transport=self._transport)
        self._sem = asyncio.Semaphore(c.max_concurrency)

    def close(self) -> None:
        """Close the connection pool and stop the backend's event-loop thread (idempotent)."""
        with self._lock:
            self._closed = True
            loop, http = self._loop, self._http
            self._loop = self._http = None
        if loop is not None:
            if http is not None:
                loop.run(http.aclose())
            loop.stop()

    def __enter__(self) -> "OpenAIJudgeBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def config_fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"engine": "openai", "model": c.model, "top_logprobs": c.top_logprobs, "prefill": c.prefill}

    # ----------------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {self.config.api_key_env} is not set", field="api_key_env")
            h["Authorization"] = f"Bearer {key}"
        return h

    def _loader(self) -> Any:
        if self._media is None:
            from mmrm.rm.media import MediaLoader

            self._media = MediaLoader(self._media_policy) if self._media_policy else MediaLoader()
        return self._media

    @staticmethod
    def _png_uri(image: Any) -> str:
        from mmrm.rm.media import to_data_uri

        return to_data_uri(image)  # lossless PNG: the server decodes exactly the loaded pixels

    def _wire_messages(self, messages: list[Message], prefill: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            if isinstance(m.content, str):
                out.append({"role": m.role, "content": m.content})
                continue
            parts: list[dict[str, Any]] = []
            for j, p in enumerate(m.content):
                where = f"messages[{i}].content[{j}]"
                if isinstance(p, TextPart):
                    parts.append({"type": "text", "text": p.text})
                elif isinstance(p, ImagePart):
                    image = self._loader().load_image(p.url, field=f"{where}.image_url")
                    parts.append({"type": "image_url", "image_url": {"url": self._png_uri(image)}})
                elif isinstance(p, VideoPart):
                    # OpenAI's chat format has no video part: frames go as consecutive images.
                    for frame in self._loader().load_video(p.video, field=f"{where}.video"):
                        parts.append({"type": "image_url", "image_url": {"url": self._png_uri(frame)}})
            out.append({"role": m.role, "content": parts})
        if prefill and self.supports_prefill:
            out.append({"role": "assistant", "content": prefill})
        return out

    def _body(self, messages: list[Message], prefill: str, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": self._wire_messages(messages, prefill),
            "max_tokens": min(max_tokens, self.config.max_tokens_cap),
            **self.config.extra_body,
        }
        if prefill and self.supports_prefill:
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> _Completion:
        assert self._http is not None and self._sem is not None
        http, sem = self._http, self._sem

        async def once() -> _Completion:
            async with sem:
                self.calls += 1
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                try:
                    r = await http.post("/chat/completions", json=body, headers=headers)
                finally:
                    self._in_flight -= 1
            if r.status_code >= 400:  # the retry policy decides which of these are retried
                try:
                    err: Any = r.json()
                except ValueError:
                    err = r.text[:300]
                raise ServiceError(r.status_code, err, retry_after=parse_retry_after(r.headers.get("retry-after")))
            if r.status_code != 200:
                raise BackendError(f"judge server answered HTTP {r.status_code}: {r.text[:300]}", field="backend", limit=r.status_code)
            try:
                return _Completion.model_validate(r.json())
            except (ValidationError, ValueError) as e:
                raise BackendError(f"judge server sent a malformed completion: {str(e)[:300]}", field="backend") from e

        async for attempt in self.retry_policy.aretrying(f"judge server {self.config.model!r} POST /chat/completions"):
            with attempt:
                return await once()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _gather(self, bodies: list[dict[str, Any] | MmrmError], parse: Callable[[_Completion], Any],
                      failed: Callable[[MmrmError], Any], headers: dict[str, str]) -> list[Any]:
        async def one(body: dict[str, Any] | MmrmError) -> Any:
            if isinstance(body, MmrmError):
                return failed(body)
            try:
                return parse(await self._post(body, headers))
            except ServiceError as e:
                return failed(BackendError(f"judge server answered {str(e)[:300]}", field="backend", limit=e.status))
            except MmrmError as e:
                return failed(e)
            except httpx.HTTPError as e:
                return failed(BackendError(f"judge server request failed (retries: at most {self.config.max_retries}): "
                                           f"{type(e).__name__}: {e}", field="backend"))

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    def _bodies(self, items: list[tuple[list[Message], str, int]], extra: Callable[[int], dict[str, Any]]) -> list[dict[str, Any] | MmrmError]:
        out: list[dict[str, Any] | MmrmError] = []
        for k, (msgs, prefill, max_tokens) in enumerate(items):
            try:
                out.append({**self._body(msgs, prefill, max_tokens), **extra(k)})
            except MmrmError as e:  # a media error stays with its item
                out.append(e)
        return out

    # ----------------------------------------------------------------------------------------------
    def label_probs(self, requests: list[LabelRequest]) -> list[LabelReply]:
        k = self.config.top_logprobs
        headers = self._headers()  # a missing API key fails the call, not each item
        bodies = self._bodies([(r.messages, r.prefill, 1) for r in requests],
                              lambda i: {"temperature": 0.0, "logprobs": True, "top_logprobs": k})

        async def go() -> list[LabelReply]:
            results: list[LabelReply] = []
            for i, rep in enumerate(await self._gather(bodies, lambda c: c, lambda e: LabelReply(error=e), headers)):
                if isinstance(rep, LabelReply):
                    results.append(rep)
                    continue
                lp = rep.choices[0].logprobs
                if lp is None or not lp.content:
                    results.append(LabelReply(error=BackendError("the server returned no logprobs", field="backend")))
                    continue
                first = lp.content[0]
                seen = {t.token: t.logprob for t in first.top_logprobs}
                seen.setdefault(first.token, first.logprob)
                probs = {lab: 0.0 for lab in requests[i].labels}
                for tok, lpv in seen.items():
                    key = tok.strip()
                    if key in probs:
                        probs[key] += math.exp(lpv)
                results.append(LabelReply(probs=probs, top_k=k))
            return results

        return self._run(go)

    def generate(self, requests: list[GenRequest]) -> list[GenReply]:
        def extra(i: int) -> dict[str, Any]:
            r = requests[i]
            e: dict[str, Any] = {"temperature": r.temperature, "seed": r.seed}
            if r.stop:
                e["stop"] = list(r.stop)
            if r.schema is not None:
                e["response_format"] = {"type": "json_schema", "json_schema": {"name": "judge_answer", "schema": r.schema.json_schema(), "strict": True}}
            return e

        headers = self._headers()
        bodies = self._bodies([(r.messages, r.prefill, r.max_tokens) for r in requests], extra)

        def parse(c: _Completion) -> GenReply:
            ch = c.choices[0]
            usage = {k: int(v) for k, v in (c.usage or {}).items() if isinstance(v, int)}
            stop = ch.stop_reason if isinstance(ch.stop_reason, str) else None
            return GenReply(text=ch.message.content or "", finish_reason=ch.finish_reason, stop=stop, usage=usage)

        return self._run(lambda: self._gather(bodies, parse, lambda e: GenReply(error=e), headers))

    # ----------------------------------------------------------------------------------------------
    def check_labels(self, prefill: str, labels: tuple[str, ...]) -> None:
        """Check single-token labels with the server's ``/tokenize`` (vLLM, SGLang); skipped where absent."""
        root = self.config.base_url.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root

        headers = self._headers()

        async def count(text: str) -> int | None:
            assert self._http is not None
            r = await self._http.post(f"{root}/tokenize", headers=headers,
                                      json={"model": self.config.model, "prompt": text, "add_special_tokens": False})
            if r.status_code != 200:
                return None
            data = r.json()
            return int(data["count"]) if "count" in data else len(data.get("tokens", []))

        try:
            base = self._run(lambda: count(prefill))
            if base is None:
                log.warning("judge server has no /tokenize; single-token labels not checked for %s", self.config.model)
                return
            for lab in labels:
                n = self._run(lambda lab=lab: count(prefill + lab))  # type: ignore[misc]
                if n is not None and n != base + 1:
                    raise ConfigError(
                        f"label {lab!r} is {n - base} tokens after {prefill!r} for {self.config.model}; "
                        "use single-token labels (e.g. a 1..9 scale, not 1..10)",
                        field="labels", limit="one token per label",
                    )
        except httpx.HTTPError as e:
            log.warning("could not check labels with %s/tokenize: %s", root, e)


__all__ = ["OpenAIBackendConfig", "OpenAIJudgeBackend", "TOP_LOGPROBS_LIMIT"]
