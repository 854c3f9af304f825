"""The service's capacity and deadline defaults, for code that sizes a service without importing it.

The RL side (:mod:`mmrm.rl.openrlhf`'s sizing checks) must know what a serve config means when it
leaves a knob out, but nothing outside the CLI and tests imports :mod:`mmrm.serve` (it pulls in Ray).
So the numbers live here, in the dependency-free core, and both sides read them; a test checks that
the serve config's defaults are these.

>>> MAX_INFLIGHT, REQUEST_TIMEOUT_S
(256, 120.0)
"""

from __future__ import annotations

__all__ = ["MAX_INFLIGHT", "MAX_ONGOING_REQUESTS", "MAX_QUEUED_REQUESTS", "NUM_REPLICAS", "REQUEST_TIMEOUT_S"]

#: ``admission.max_inflight``: requests the ingress admits at once (the rest: 503 + Retry-After).
MAX_INFLIGHT = 256
#: ``limits.request_timeout_s``: the per-request deadline at the ingress (504 after it).
REQUEST_TIMEOUT_S = 120.0
#: A model entry's ``num_replicas`` (without autoscaling).
NUM_REPLICAS = 1
#: A model entry's ``max_ongoing_requests``: requests one replica works on at once.
MAX_ONGOING_REQUESTS = 64
#: A model entry's ``max_queued_requests``: Serve's queue in front of the replicas.
MAX_QUEUED_REQUESTS = 256
