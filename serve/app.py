"""Build the Ray Serve application from mmrm's config block.

``import_path: mmrm.serve.app:build_app`` in a serve config file makes Serve call
:func:`build_app` with the ``args`` block; ``mmrm serve``, ``serve deploy`` and a KubeRay
RayService all go through here, so the same file behaves the same everywhere.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from mmrm.serve.config import JudgeConfig, ModelConfig, ServiceConfig
from mmrm.serve.judge_deployment import JudgeServer
from mmrm.serve.reward_deployment import RewardModelServer


def _model_deployment(mc: ModelConfig, cfg: ServiceConfig) -> Application:
    options: dict[str, Any] = {
        "name": f"model-{mc.name}",
        "ray_actor_options": {"num_cpus": mc.num_cpus, "num_gpus": mc.num_gpus},
        "max_ongoing_requests": mc.max_ongoing_requests,
        "max_queued_requests": mc.max_queued_requests,
        "user_config": mc.knobs(),
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_wait_loop_s": 2,
        "graceful_shutdown_timeout_s": 60,
    }
    if mc.autoscaling is not None:
        options["autoscaling_config"] = mc.autoscaling.model_dump()
    else:
        options["num_replicas"] = mc.num_replicas
    dep = serve.deployment(RewardModelServer).options(**options)
    return dep.bind(mc.model_dump(mode="json"), cfg.limits.media.model_dump(mode="json"))


def _judge_deployment(jc: JudgeConfig, cfg: ServiceConfig) -> Application:
    dep = serve.deployment(JudgeServer).options(
        name=f"judge-{jc.name}",
        num_replicas=jc.num_replicas,
        ray_actor_options={"num_cpus": jc.num_cpus, "num_gpus": jc.num_gpus},
        max_ongoing_requests=jc.max_ongoing_requests,
        max_queued_requests=jc.max_queued_requests,
        graceful_shutdown_timeout_s=60,
    )
    return dep.bind(jc.model_dump(mode="json"), cfg.limits.media.model_dump(mode="json"))


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: validates ``args`` (a :class:`ServiceConfig`) and binds the graph."""
    from mmrm.serve.ingress_deployment import Ingress

    cfg = ServiceConfig.model_validate(args)
    models = {mc.name: _model_deployment(mc, cfg) for mc in cfg.models}
    judges = {jc.name: _judge_deployment(jc, cfg) for jc in cfg.judges}
    return Ingress.options(ray_actor_options={"num_cpus": cfg.ingress_num_cpus}).bind(
        cfg.model_dump(mode="json"), models, judges)
