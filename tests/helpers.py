"""Shared test utilities: images as data URIs, a few conversations with media, one way to wait for
a condition (:func:`wait_until`) and one way to pick a free port (:func:`free_port`).

Imported by tests and by tests/vllm_server.py (a script too, run by the project's python): it
imports numpy, pillow and pydantic, never mmrm or torch (tests/test_layout.py checks).
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict


def image_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB image as a uint8 array [height, width, 3] (seeded, so reproducible)."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(arr: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a uint8 RGB array."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(arr)).decode("ascii")


def image_uri(height: int, width: int, seed: int = 0) -> str:
    """A random PNG image of the given size as a data URI."""
    return png_data_uri(image_array(height, width, seed))


def pil_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(image_array(height, width, seed))


def image_part(uri: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": uri}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def video_part(frames: list[str]) -> dict[str, Any]:
    return {"type": "video", "video": frames}


def state_dicts_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same keys, same shapes, bit-identical values."""
    import torch

    if a.keys() != b.keys():
        return False
    return all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


class VllmErrorInfo(BaseModel):
    """vLLM 0.32.0 ``vllm/entrypoints/serve/engine/protocol.py::ErrorInfo``, transcribed independently
    of mmrm's own copy (``OpenAIBaseModel``: extra keys allowed)."""

    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None = None
    code: int


class VllmErrorResponse(BaseModel):
    """vLLM 0.32.0's ``ErrorResponse``: ``{"error": ErrorInfo}``."""

    model_config = ConfigDict(extra="allow")
    error: VllmErrorInfo


# ------------------------------------------------------------------------------ waiting and ports

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """:func:`wait_until` ran out of time: a test failure (AssertionError) that says what it waited for.

    Also a TimeoutError, for the few callers whose wait is best effort (``contextlib.suppress``)."""


def wait_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.5,
               message: str | Callable[[], str] = "the condition did not hold",
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value, and return it.

    ``predicate`` runs at least once, even with ``timeout=0``. An exception it raises ends the wait
    (so a predicate can assert that a server process is still alive), except one of ``ignore``,
    which counts as "not yet" (``httpx.TransportError`` while a server starts). After ``timeout``
    seconds it raises :class:`WaitTimeout` with ``message``; a callable message is built only then
    (e.g. the tail of a log file written during the wait), and the last ignored error is chained.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as e:
            last, value = e, None
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            text = message() if callable(message) else message
            raise WaitTimeout(f"{text} (waited {timeout:g} s)") from last
        time.sleep(min(interval, left))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free (bind to port 0); it stays free until someone
    binds it, so pass it straight to the server that needs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_in_thread(handler: type[BaseHTTPRequestHandler], port: int = 0) -> ThreadingHTTPServer:
    """A scripted HTTP server on 127.0.0.1 (``port`` 0: a free one), serving from a daemon thread.

    Stop it with ``httpd.shutdown(); httpd.server_close()``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd
