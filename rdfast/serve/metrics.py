"""The server's Prometheus metrics, in a registry of its own (two servers in one process never share counts)."""
from __future__ import annotations

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError:  # the optional extra rdfast[serve]; create_app says so
    CollectorRegistry = None

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GROUP_STD_BUCKETS = (0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
FRACTION_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Requests, items, errors, engine calls, batch sizes, queue depth, latency and GRPO group telemetry of one
    server."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rdfast_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.items = Counter("rdfast_items", "items scored", ["endpoint"], registry=r)
        self.errors = Counter("rdfast_errors", "failed requests by endpoint and reason", ["endpoint", "reason"],
                              registry=r)
        self.engine_calls = Counter("rdfast_engine_calls", "reward model calls (one per batch)", registry=r)
        self.batch_items = Histogram("rdfast_batch_items", "items per engine call", buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("rdfast_batch_requests", "requests per engine call", buckets=BATCH_BUCKETS,
                                        registry=r)
        self.queue_depth = Gauge("rdfast_queue_depth", "requests waiting for the batcher", registry=r)
        self.latency = Histogram("rdfast_request_seconds", "request latency", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=r)

        # per /v1/group request: a collapsing spread or a growing saturated share is what reward hacking looks like
        self.group_std = Histogram("rdfast_group_std", "std (ddof 0) of the scores of one /v1/group request",
                                   buckets=GROUP_STD_BUCKETS, registry=r)
        self.group_saturated = Histogram("rdfast_group_saturated_fraction",
                                         "share of a group's scores below 0.01 or above 0.99",
                                         buckets=FRACTION_BUCKETS, registry=r)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
