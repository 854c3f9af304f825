"""mmrm's ``vllm`` engine: a vLLM server runs the backbone, mmrm runs the head.

vLLM pins its own torch, so it runs out of process, in its own environment, started by you:

    mmrm vllm-view CHECKPOINT VIEW_DIR          # the backbone files alone (vLLM would try to
                                                # load the head's weights as model weights)
    vllm serve VIEW_DIR --runner pooling --convert embed \\
        --pooler-config '{"seq_pooling_type": "LAST", "use_activation": false}'

Its pooling runner returns the last token's final hidden state (no normalization), exactly what
mmrm's head was trained on. mmrm encodes every sample itself (same chat template, same token ids,
same length limits as the ``hf`` engine), sends the token ids to ``/v1/embeddings`` and applies the
head in process, so the rewards equal the ``hf`` engine's up to float rounding. Continuous batching
and prefix caching (a GRPO group's shared prompt) are vLLM's. Text-only samples: images and video
are refused with ``unsupported_input`` (use the ``hf`` engine for them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import httpx
import torch
from torch import nn

import mmrm
from mmrm.rm import checkpoint as ckpt
from mmrm.rm.encode import Encoded
from mmrm.rm.errors import BackendError, ConfigError, MmrmError, UnsupportedInput
from mmrm.rm.media import MediaLoader, MediaPolicy
from mmrm.rm.reward_model import RewardModel, load_head, load_processor
from mmrm.rm.types import Provenance, Sample

log = logging.getLogger("mmrm.rm")

#: files of an mmrm checkpoint that are not the backbone's.
MMRM_FILES = (ckpt.CONFIG_NAME, ckpt.HEAD_NAME, ckpt.ADAPTER_DIR)

#: the ``--pooler-config`` the vLLM server must run with.
POOLER_CONFIG = '{"seq_pooling_type": "LAST", "use_activation": false}'


class ServerRefused(BackendError):
    """The vLLM server refused a request (a 4xx answer): something in it, not the server, is wrong."""


def _merged_config(path: Path) -> ckpt.RewardConfig:
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
    _merged_config(src)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in MMRM_FILES and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    return out


class VLLMRewardModel(RewardModel):
    """A reward model whose backbone forward runs on a vLLM server (see the module docstring).

    Everything above the forward (encoding, limits, pairs, groups, results) is
    :class:`RewardModel`'s; build one with :meth:`from_server`.
    """

    def __init__(self, processor: Any, head: nn.Module, config: ckpt.RewardConfig, *, base_url: str,
                 served_model: str, timeout_s: float = 120.0, api_key: str | None = None, **kw: Any) -> None:
        # No backbone weights in this process: the server holds them.
        super().__init__(nn.Identity(), processor, head, config, **kw)  # type: ignore[arg-type]
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    @classmethod
    def from_server(
        cls,
        path: str | Path,
        *,
        base_url: str,
        served_model: str,
        timeout_s: float = 120.0,
        api_key: str | None = None,
        max_length: int | None = None,
        truncation: Literal["refuse", "left"] | None = None,
        media_policy: MediaPolicy | None = None,
        name: str | None = None,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
    ) -> "VLLMRewardModel":
        """The checkpoint's tokenizer, config and head here; its backbone served at ``base_url``
        (``http://host:port/v1``) under the name ``served_model``."""
        path = Path(path)
        cfg = _merged_config(path)
        processor = load_processor(path)
        updates = {k: v for k, v in (("max_length", max_length), ("truncation", truncation)) if v is not None}
        rm = cls(processor, load_head(path, cfg), cfg.model_copy(update=updates), base_url=base_url,
                 served_model=served_model, timeout_s=timeout_s, api_key=api_key,
                 media=MediaLoader(media_policy), name=name or path.name, fingerprint=ckpt.fingerprint(path),
                 max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
        served = rm._server_max_len()
        if served is not None and served < rm.config.max_length:
            # Longer samples would be refused by the server as a whole batch: refuse (or truncate)
            # them here instead, one by one, naming the limit.
            log.warning("vllm engine: the server's max_model_len %d is below the checkpoint's max_length %d; using %d",
                        served, rm.config.max_length, served)
            rm.config = rm.config.model_copy(update={"max_length": served})
            rm.encoder.max_length = served
        return rm

    def _server_max_len(self) -> int | None:
        """The served model's ``max_model_len`` from ``/models``; None when the server does not say."""
        try:
            r = self._http.get(f"{self.base_url}/models")
            cards = r.json().get("data", []) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return None  # not up yet: the first score says so per item
        return next((int(c["max_model_len"]) for c in cards if c.get("id") == self.served_model and c.get("max_model_len")), None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    @property
    def provenance(self) -> Provenance:
        return Provenance(scorer=self.name, kind="reward_model", fingerprint=self.fingerprint,
                          mmrm_version=mmrm.__version__, engine="vllm", dtype=None)

    def encode(self, sample: Sample) -> Encoded:
        enc = super().encode(sample)
        if enc.n_images or enc.n_videos:
            raise UnsupportedInput("the vllm engine scores text-only samples; serve this model with the hf engine "
                                   "for images and video", field="prompt")
        return enc

    def _embed(self, ids: list[list[int]]) -> list[list[float]]:
        url = f"{self.base_url}/embeddings"
        try:
            r = self._http.post(url, json={"model": self.served_model, "input": ids, "encoding_format": "float"})
        except httpx.HTTPError as e:
            raise BackendError(f"vLLM server at {self.base_url} unreachable: {e}") from None
        if r.status_code != 200:
            cls = ServerRefused if 400 <= r.status_code < 500 else BackendError
            raise cls(f"vLLM server at {self.base_url} answered {r.status_code}: {r.text[:300]}")
        data = sorted(r.json()["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]

    @torch.no_grad()
    def rewards_of(self, encoded: Sequence[Encoded]) -> list[float | MmrmError | RuntimeError]:
        """Rewards from the server's last-token states, :attr:`max_batch_size` samples per request;
        a request that fails makes its samples' results that error (nothing is raised)."""
        results: list[float | MmrmError | RuntimeError] = [0.0] * len(encoded)
        for start in range(0, len(encoded), self.max_batch_size):
            idx = list(range(start, min(start + self.max_batch_size, len(encoded))))
            self.forward_calls += 1
            try:
                states = torch.tensor(self._embed([encoded[i].input_ids.tolist() for i in idx]), dtype=self.dtype)
                values: list[float | MmrmError | RuntimeError] = self.head(states).float().tolist()
            except BackendError as e:
                log.warning("vllm engine: %s", e)
                # The server refused the request (4xx): find the item(s) it refuses, one by one.
                values = ([self.rewards_of([encoded[i]])[0] for i in idx] if isinstance(e, ServerRefused) and len(idx) > 1
                          else [e] * len(idx))
            for i, v in zip(idx, values):
                results[i] = v
        return results

    def rewards_of_group(self, encoded: Sequence[Encoded]) -> list[float | MmrmError | RuntimeError]:
        """A group is plain samples here: vLLM's prefix cache reuses the shared prompt."""
        return self.rewards_of(encoded)

    def close(self) -> None:
        self._http.close()
