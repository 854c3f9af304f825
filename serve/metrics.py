"""Prometheus metrics of the service, all exported by the ingress at ``GET /metrics``.

Batch size and queue depth are measured inside the model replicas (other processes, which this
registry cannot see); the replicas return them with each result and the ingress records them
here, so one scrape of ``/metrics`` has everything the Grafana dashboard in ``k8s/`` queries.
With several ingress replicas, each exports its own share: scrape every pod (the ServiceMonitor
does) and sum.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SCORE_BUCKETS = (-10, -5, -3, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1, 2, 3, 5, 10)

REQUESTS = Counter("mmrm_requests", "HTTP requests by route, model and status code.",
                   ["route", "model", "code"], registry=REGISTRY)
LATENCY = Histogram("mmrm_request_duration_seconds", "Request latency at the ingress.", ["route", "model"],
                    buckets=_LAT_BUCKETS, registry=REGISTRY)
ERRORS = Counter("mmrm_errors", "Errors by route and kind.", ["route", "kind"], registry=REGISTRY)
SCORES = Histogram("mmrm_score", "Distribution of returned scores (rewards, P(A>B)).", ["route", "model"],
                   buckets=_SCORE_BUCKETS, registry=REGISTRY)
ITEMS = Counter("mmrm_items", "Scored items by outcome (ok / invalid).", ["route", "model", "outcome"], registry=REGISTRY)
BATCH_SIZE = Histogram("mmrm_batch_size", "Items per dynamic batch in a model replica.", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)
QUEUE_DEPTH = Gauge("mmrm_queue_depth", "Items waiting in a model replica when its last batch started.", ["model"],
                    registry=REGISTRY)
INFLIGHT = Gauge("mmrm_inflight_requests", "Requests admitted and not finished at this ingress.", registry=REGISTRY)
REJECTED = Counter("mmrm_rejected", "Requests refused by admission control or rate limits.", ["reason"], registry=REGISTRY)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
