"""The service configuration: mmrm's ``args`` block inside a Ray Serve config file.

One YAML file runs everywhere (``mmrm serve``, ``serve deploy``, a KubeRay RayService)::

    http_options: {host: 127.0.0.1, port: 8000}
    applications:
    - name: mmrm
      route_prefix: /
      import_path: mmrm.serve.app:build_app
      args:                       # <- ServiceConfig, validated here
        models:
        - name: digits
          checkpoint: /models/digits
          num_cpus: 2
        auth: {token_env: MMRM_API_TOKEN}

Secrets never live in the file: ``auth.token_env`` names the environment variable holding the
bearer token, which is read in the ingress process at start-up.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmrm.judges.backends.openai import OpenAIBackendConfig
from mmrm.judges.judge import JudgeOptions
from mmrm.judges.rubrics import list_rubrics
from mmrm.rm.errors import ConfigError
from mmrm.rm.media import MediaPolicy
from mmrm.rm import service_defaults as defaults
from mmrm.rm.options import ModelOptions, ScoringOptions, VLLMServer


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Autoscaling(_Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=8, gt=0)


#: fields of a model entry that change on a live replica without a restart (Serve's ``reconfigure``).
LIVE_KNOBS = ("max_batch_size", "batch_wait_timeout_s", "max_batch_tokens")


class VLLMEngineSettings(VLLMServer):
    """Where the ``vllm`` engine's server runs (see mmrm.rm.engines.vllm; started by you)."""

    api_key_env: str | None = Field(default=None, description="Env var holding the server's API key, if it has one.")

    @model_validator(mode="after")
    def _no_secret(self) -> "VLLMEngineSettings":
        if self.api_key is not None:
            raise ValueError("vllm.api_key never lives in the config file: put the key in an environment variable "
                             "and name it in vllm.api_key_env")
        return self


class ModelConfig(ModelOptions):
    """A reward model served as one Ray Serve deployment.

    How it loads and scores (engine, device, dtype, max_length, truncation, batching, packing,
    caches, compile) are the :class:`~mmrm.rm.options.ModelOptions` fields, at the top level of the
    entry; the media policy is the service's ``limits.media``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Model id used in requests.")
    kind: Literal["reward_model"] = "reward_model"
    checkpoint: Path = Field(description="Reward checkpoint directory (mmrm's own, or a published layout: see `mmrm inspect`).")
    vllm: VLLMEngineSettings | None = Field(default=None, description="The vLLM server; required with engine: vllm.")
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, le=10, description="How long a dynamic batch waits to fill (max_batch_size items).")
    num_replicas: int | None = Field(default=defaults.NUM_REPLICAS, ge=1, description="Fixed replica count (unset with autoscaling).")
    autoscaling: Autoscaling | None = None
    # Ray gives torch one thread per CPU of the replica: size this deliberately.
    num_cpus: float = Field(default=1, gt=0, description="CPUs per replica (= torch threads on the CPU).")
    num_gpus: float = Field(default=0, ge=0)
    max_ongoing_requests: int = Field(default=defaults.MAX_ONGOING_REQUESTS, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(default=defaults.MAX_QUEUED_REQUESTS, ge=-1, description="Serve's queue in front of the replicas.")
    health_timeout_s: float = Field(default=300, gt=0, description="A batch running longer marks the replica unhealthy.")

    @model_validator(mode="after")
    def _replicas(self) -> "ModelConfig":
        if self.autoscaling is not None:
            self.num_replicas = None
        return self

    def knobs(self) -> dict[str, Any]:
        """The live-reconfigurable part (Serve ``user_config``): the checkpoint and :data:`LIVE_KNOBS`."""
        return {"checkpoint": str(self.checkpoint), **{k: getattr(self, k) for k in LIVE_KNOBS}}

    def scoring_options(self, media: MediaPolicy, *, api_key: str | None = None) -> ScoringOptions:
        """The :class:`~mmrm.rm.options.ScoringOptions` this entry loads its model with: its own
        options, the service's media policy, and the vLLM server's API key (read by the replica
        from ``vllm.api_key_env``)."""
        fields = self.model_dump(include=set(ModelOptions.model_fields))
        if self.vllm is not None:
            fields["vllm"] = VLLMServer(**self.vllm.model_dump(include=set(VLLMServer.model_fields)) | {"api_key": api_key})
        return ScoringOptions(**fields, media_policy=media)


class HFJudgeBackendSettings(_Strict):
    type: Literal["hf"] = "hf"
    model: Path = Field(description="A transformers checkpoint directory of the judge LMM.")
    device: str = Field(default="auto", description="auto (the first CUDA device when there is one, else the CPU), "
                        "cpu, cuda or cuda:N.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="The judge's compute dtype.")
    max_batch_size: int = Field(default=16, ge=1, description="Judge prompts per forward pass.")
    max_length: int = Field(default=4096, gt=0, description="Longest judge prompt in tokens (longer ones are refused per item).")


class OpenAIJudgeBackendSettings(OpenAIBackendConfig):
    type: Literal["openai"] = "openai"


class JudgeConfig(_Strict):
    """A generative judge served behind ``/v1/judge``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: Literal["judge"] = "judge"
    backend: Annotated[Union[HFJudgeBackendSettings, OpenAIJudgeBackendSettings], Field(discriminator="type")]
    judge: JudgeOptions = Field(default_factory=JudgeOptions, description="How answers are read; cost bounds.")
    rubrics: list[str] = Field(
        default_factory=lambda: list_rubrics(),
        description="Rubrics and judge presets requests may name: shipped names, or paths of the operator's own "
        "rubric or preset files (requests can name them by file stem, never by path).",
    )
    default_rubric: str = "helpfulness"
    num_cpus: float = Field(default=1, gt=0)
    num_gpus: float = Field(default=0, ge=0)
    num_replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=16, ge=1)
    max_queued_requests: int = Field(default=64, ge=-1)


class Limits(_Strict):
    """Per-request bounds, checked at the ingress before any work starts (except ``media``, which
    the replicas apply to each item). Over a count or size limit: 422 (413 for bytes), naming the
    field and the limit."""

    # Parameters that bound what one request may ask for.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="Request body bytes (413 above).")
    max_items: int = Field(default=256, gt=0, description="Items (samples, pairs, groups) per request.")
    max_group_size: int = Field(default=64, gt=0, description="Responses per group in /v1/rank.")
    # A request's cost follows the samples it scores, not its items: a /v1/rank of 256 groups x 64
    # responses is 16,384 samples.
    max_samples: int = Field(
        default=1024, gt=0,
        description="Samples scored per request: items (/v1/score), pairs x 2 (/v1/compare), the responses "
        "of all groups (/v1/rank); for /v1/judge, items, or pairs x 2 responses x 2 orders (422 above).")
    max_text_chars: int = Field(
        default=8_000_000, gt=0,
        description="Characters of text summed over the samples scored (a group's prompt counts once per "
        "response: each is encoded with it), 422 above.")
    max_request_pixels: int = Field(
        default=500_000_000, gt=0,
        description="Image pixels summed over the samples scored, from the image headers of inline images "
        "(data URIs, base64), before anything is decoded (422 above). Images by path or URL are bounded "
        "one by one (media.max_pixels) when a replica loads them.")
    # Parameters that bound time.
    request_timeout_s: float = Field(
        default=defaults.REQUEST_TIMEOUT_S, gt=0,
        description="Per-request deadline at the ingress (504). The replicas get it too and stop the "
        "request's remaining work (queued items, sub-batches, media decoding) once it passes.")
    body_timeout_s: float = Field(
        default=30, gt=0,
        description="Time for a request's body to arrive completely (408 after it). A request is admitted "
        "(counted against admission.max_inflight) only once its body is complete.")
    max_header_bytes: int = Field(
        default=16 * 1024, gt=0,
        description="Bytes of all request headers (names + values), 431 above; checked before the token is "
        "compared. Default: h11's cap on a request head.")
    media: MediaPolicy = Field(default_factory=MediaPolicy)


class Admission(_Strict):
    """mmrm's own admission control at the ingress: at most ``max_inflight`` requests at once;
    the rest get 503 with ``Retry-After`` at once instead of waiting in an unbounded queue.

    A request counts against ``max_inflight`` only once its body has arrived; while it arrives it
    counts against ``max_body_reads`` (a separate, larger bound: it keeps the bodies held in memory
    bounded, and a client trickling its body can never take a slot that complete requests need)."""

    max_inflight: int = Field(default=defaults.MAX_INFLIGHT, ge=1, description="Requests with a complete body worked on at once (503 above).")
    max_body_reads: int | None = Field(
        default=None, ge=1,
        description="Requests whose body is still arriving, at once (503 above); unset: 4 x max_inflight. "
        "Each is held at most limits.body_timeout_s.")
    retry_after_s: float = Field(default=1.0, gt=0, description="Retry-After of a 503 from admission.")

    @property
    def body_reads(self) -> int:
        return self.max_body_reads if self.max_body_reads is not None else 4 * self.max_inflight


class RateLimit(_Strict):
    """Per-token request rate (token bucket); excess gets 429 with ``Retry-After``."""

    requests_per_s: float = Field(gt=0)
    burst: int = Field(default=10, ge=1)


class Auth(_Strict):
    token_env: str | None = Field(default=None, description="Env var holding the bearer token; unset = auth off.")
    protect_metrics: bool = Field(default=False, description="Require the token on /metrics too.")
    open_routes: list[Literal["/get_reward", "/classify"]] = Field(
        default_factory=list,
        description="Compatibility routes reachable WITHOUT the token, for RL stacks whose clients cannot send "
        "one (OpenRLHF, verl). Use only on a private network.",
    )
    rate_limit: RateLimit | None = None


class _OnInvalid(_Strict):
    """What a compat route answers for an item that cannot be scored (neither protocol has a
    per-item error slot): ``error`` fails the request; ``fill`` answers ``fill_value`` for that item,
    flags it where the protocol allows, logs it, and counts it in ``mmrm_errors_total``."""

    on_invalid: Literal["error", "fill"] = Field(
        default="error", description="error: a failed item fails its request; fill: it gets fill_value (flagged, logged).")
    fill_value: float | None = Field(
        default=None, description="The reward a failed item gets with on_invalid: fill (a finite number).")

    @model_validator(mode="after")
    def _fill(self) -> "_OnInvalid":
        if self.on_invalid == "fill" and (self.fill_value is None or not math.isfinite(self.fill_value)):
            raise ValueError(f"on_invalid: fill needs a finite fill_value (the reward a failed item gets, e.g. "
                             f"fill_value: -1.0), got {self.fill_value!r}")
        if self.on_invalid == "error" and self.fill_value is not None:
            raise ValueError("fill_value is used only with on_invalid: fill; set on_invalid: fill or remove fill_value")
        return self


class OpenRLHFCompat(_OnInvalid):
    """Options of the OpenRLHF ``/get_reward`` route (see :mod:`mmrm.serve.compat.openrlhf`).
    Recommended for OpenRLHF: ``on_invalid: fill`` (with ``error``, one failed rollout fails the
    training step; the ingress warns at start-up)."""

    model: str | None = Field(default=None, description="Model that scores /get_reward (default: the first).")
    scores: Literal["sigmoid", "reward"] = "sigmoid"


class ClassifyCompat(_OnInvalid):
    """Options of the vLLM-shaped ``/classify`` route (see :mod:`mmrm.serve.compat.vllm_classify`).
    Recommended for verl's reward-model path: ``on_invalid: fill`` (verl does not retry a 4xx)."""


class Compat(_Strict):
    openrlhf: OpenRLHFCompat = Field(default_factory=OpenRLHFCompat)
    classify: ClassifyCompat = Field(default_factory=ClassifyCompat)
    classify_default_model: str | None = Field(
        default=None,
        description="Model used by /classify when the body names none or a name that is not served (verl sends "
        "the reward model's path as `model`). Unset: none given -> the first model; unknown name -> 404.",
    )


class ServiceConfig(_Strict):
    """mmrm's ``args`` block."""

    models: list[ModelConfig] = Field(default_factory=list)
    judges: list[JudgeConfig] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    admission: Admission = Field(default_factory=Admission)
    auth: Auth = Field(default_factory=Auth)
    compat: Compat = Field(default_factory=Compat)
    ingress_num_cpus: float = Field(default=0.5, gt=0)

    @field_validator("judges")
    @classmethod
    def _unique(cls, v: list[JudgeConfig], info: Any) -> list[JudgeConfig]:
        names = [m.name for m in info.data.get("models", [])] + [j.name for j in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model and judge names must be unique; repeated: {sorted(dup)}")
        return v

    @model_validator(mode="after")
    def _something(self) -> "ServiceConfig":
        if not self.models and not self.judges:
            raise ValueError("configure at least one model or judge")
        return self


class Application(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = "mmrm"
    route_prefix: str = "/"
    import_path: str
    args: dict[str, Any] = Field(default_factory=dict)


class ServeFile(BaseModel):
    """The whole Ray Serve config file (only the parts mmrm reads are typed)."""

    model_config = ConfigDict(extra="allow")

    http_options: dict[str, Any] = Field(default_factory=dict)
    applications: list[Application] = Field(min_length=1)

    def mmrm_apps(self) -> list[tuple[Application, ServiceConfig]]:
        return [(a, ServiceConfig.model_validate(a.args)) for a in self.applications if a.import_path.startswith("mmrm.")]


def load_serve_file(path: str | Path) -> ServeFile:
    """Read and validate a serve config file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        sf = ServeFile.model_validate(raw)
        sf.mmrm_apps()
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"invalid serve config {path}: {e}", field=str(path)) from e
    return sf
