"""The ingress as a Ray Serve deployment wrapping the FastAPI app.

The app is built per replica after ``__init__`` (Serve's deferred ASGI mode), because its routes
need the validated config and the typed handles of the model deployments.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from mmrm.serve.config import ServiceConfig
from mmrm.serve.ingress import build_fastapi


# A replaced ingress (a redeploy) drains its requests before it exits; one may be waiting for a model
# replica that is itself being replaced, and loading a model can take longer than Serve's default
# 20 s. 150 s covers the default request deadline plus the body deadline (120 s + 30 s), after which
# every request has its answer anyway.
@serve.deployment(name="ingress", max_ongoing_requests=1024, graceful_shutdown_timeout_s=150)
@serve.ingress()
class Ingress:
    def __init__(self, config: dict[str, Any], models: dict[str, DeploymentHandle],
                 judges: dict[str, DeploymentHandle]) -> None:
        self.config = ServiceConfig.model_validate(config)
        self.handles = models
        self.judges = judges

    def __serve_build_asgi_app__(self) -> Any:
        return build_fastapi(self.config, self.handles, self.judges)
