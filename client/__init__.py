"""mmrm.client: the HTTP client of the mmrm service (sync and async) and a remote Scorer.

Light on purpose: httpx, tenacity and pydantic only, no torch and no Ray, so an RL worker or an eval
script can import it anywhere. Requests and responses are the shared wire protocol's models
(:mod:`mmrm.rm.protocol`), the same ones the server validates.
"""

from mmrm.client.http import AsyncClient, Client, RemoteScorer, ServiceError, TransportError, parse_retry_after

__all__ = ["AsyncClient", "Client", "RemoteScorer", "ServiceError", "TransportError", "parse_retry_after"]
