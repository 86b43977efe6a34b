"""``rdfast serve --ray``: the same HTTP API (``create_app``) on Ray Serve replicas, one model per replica.

Each replica loads the model and builds the app inside its own process (Ray Serve's late-bound FastAPI ingress),
so it batches across the requests it receives exactly as a single server does. One replica per GPU on CUDA
machines, one per CPU process elsewhere; every replica asks for an explicit (fractional) number of CPUs, so that
replicas never hold CPUs other Ray work (e.g. a Ray Data job) waits for. Ray is imported here only when used.
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

from ..errors import InputError
from ..model import RewardModel
from .app import ServeSettings, create_app

APP_NAME = "rdfast"


@dataclass
class RayOptions:
    """Where and how many replicas run (the ``--ray`` flags)."""

    replicas: int = 1
    replica_cpus: float = 1.0  # CPUs each replica reserves (fractional allowed)
    gpus: bool = False  # one GPU per replica
    host: str = "127.0.0.1"
    port: int = 8000


class RewardReplica:
    """One Serve replica: the reward model and the app serving it (see ``create_app``)."""

    def __init__(self, model: str, settings: ServeSettings, device: str | None, dtype: str | None):
        import torch  # heavy: only to name the dtype

        self.rm = RewardModel.from_pretrained(model, device=device, dtype=getattr(torch, dtype) if dtype else None)
        self.settings = settings

    def __serve_build_asgi_app__(self):
        return create_app(self.rm, self.settings)


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError("rdfast serve --ray needs Ray Serve: pip install 'rdfast[ray]'") from None
    return ray, serve


def application(model: str, settings: ServeSettings, options: RayOptions, device: str | None = None,
                dtype: str | None = None):
    """The Serve application (not yet running): ``options.replicas`` replicas of ``RewardReplica``.

    Args:
        model: what ``RewardModel.from_pretrained`` takes (loaded in each replica).
        settings: each replica's batching and limits.
        options: replicas and their resources.
        device: the replicas' device (None: each picks; with ``options.gpus`` Ray hands each replica one GPU).
        dtype: "float32", "bfloat16", "float16" or None.
    """
    _, serve = _ray()
    actor = {"num_cpus": options.replica_cpus, "num_gpus": 1 if options.gpus else 0}
    # a replica takes as many requests at once as its own queue holds, so its batcher sees them all; Serve's
    # default (a handful) would cap every batch at that
    deployment = serve.deployment(serve.ingress()(RewardReplica), name="RewardReplica",
                                  num_replicas=options.replicas, ray_actor_options=actor,
                                  max_ongoing_requests=settings.queue_size + settings.max_batch)
    return deployment.bind(model, settings, "cuda" if options.gpus else device, dtype)


def start(model: str, settings: ServeSettings, options: RayOptions, device: str | None = None,
          dtype: str | None = None) -> str:
    """Deploy on the running Ray instance (started locally when there is none) and return the base URL once
    every replica is ready; ``stop()`` takes it down."""
    ray, serve = _ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(application(model, settings, options, device, dtype), name=APP_NAME, route_prefix="/")
    return f"http://{options.host}:{options.port}"


def stop() -> None:
    """Shut Ray Serve down (every replica drains through the app's lifespan)."""
    _, serve = _ray()
    serve.shutdown()


def serve_until_signal(model: str, settings: ServeSettings, options: RayOptions, device: str | None = None,
                       dtype: str | None = None) -> None:
    """``rdfast serve --ray``: deploy, print the URL, and serve until SIGINT or SIGTERM."""
    url = start(model, settings, options, device, dtype)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: done.set())
    print(f"rdfast serve: {options.replicas} Ray Serve replica(s) of {model} at {url} (pid {os.getpid()})", flush=True)
    try:
        done.wait()
    finally:
        stop()
