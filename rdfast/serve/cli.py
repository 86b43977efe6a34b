"""The ``rdfast serve`` command: load a reward model and serve it over HTTP (see rdfast.serve.app).

    rdfast serve --model tiny:qwen2_vl --port 8000               # binds 127.0.0.1 unless --host says otherwise
    rdfast serve --model DIR --ray --replicas 4                    # Ray Serve: one replica per GPU (rdfast[ray])
"""
from __future__ import annotations

import argparse

from ..errors import InputError, check_device
from ..model import RewardModel
from ..resolve import resolve
from ..testing import tiny_checkpoint
from . import ray_deploy
from .app import ServeSettings, create_app

DTYPES = ("float32", "bfloat16", "float16")


def register(sub) -> None:
    """Add the ``serve`` subcommand to the ``rdfast`` parser's subparsers ``sub``."""
    p = sub.add_parser("serve", help="serve a reward model over HTTP (JSON and the Flow-GRPO protocol)")
    p.add_argument("--model", required=True, help="checkpoint directory, tiny:FAMILY, toy:NAME or a hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="most items per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with")
    p.add_argument("--queue-size", type=int, default=256, help="most requests waiting; more get HTTP 503")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (all but /health)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (HTTP 413 above)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest image (HTTP 413 above)")
    p.add_argument("--ray", action="store_true", help="serve on Ray Serve replicas (pip install 'rdfast[ray]')")
    p.add_argument("--replicas", type=int, default=None, help="--ray: replicas (default: one per GPU, else 1)")
    p.add_argument("--replica-cpus", type=float, default=None, help="--ray: CPUs per replica (default 1; may be < 1)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as rdfast --debug")
    p.set_defaults(func=_cmd_serve)


def settings_from_args(args) -> ServeSettings:
    """The server settings of parsed ``rdfast serve`` flags, checked (an ``InputError`` names the flag)."""
    for flag, value in (("--max-batch", args.max_batch), ("--queue-size", args.queue_size),
                        ("--max-body-mb", args.max_body_mb), ("--max-megapixels", args.max_megapixels)):
        if value <= 0:
            raise InputError(f"{flag} must be positive, got {value}")
    if args.max_wait_ms < 0:
        raise InputError(f"--max-wait-ms must not be negative, got {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise InputError("--api-key must not be empty")
    if not args.ray and (args.replicas is not None or args.replica_cpus is not None):
        raise InputError("--replicas and --replica-cpus need --ray")
    return ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                         max_body_bytes=int(args.max_body_mb * (1 << 20)),
                         max_pixels=int(args.max_megapixels * 1_000_000), api_key=args.api_key,
                         model_name=args.model)


def _cmd_serve(args) -> None:
    settings = settings_from_args(args)
    check_device(args.device)
    try:
        import uvicorn  # optional: the rdfast[serve] extra
    except ImportError:
        raise InputError("rdfast serve needs FastAPI, uvicorn and prometheus-client: pip install 'rdfast[serve]'") from None
    import torch  # heavy: only to name the dtype

    if args.ray:
        return _serve_on_ray(args, settings, torch)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    rm = RewardModel.from_pretrained(args.model, device=args.device, dtype=dtype)
    uvicorn.run(create_app(rm, settings), host=args.host, port=args.port, log_level="info")


def _serve_on_ray(args, settings: ServeSettings, torch) -> None:
    gpus = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    replicas = args.replicas if args.replicas is not None else (torch.cuda.device_count() if gpus else 1)
    cpus = args.replica_cpus if args.replica_cpus is not None else 1.0
    if replicas <= 0 or cpus <= 0:
        raise InputError(f"--replicas and --replica-cpus must be positive, got {replicas} and {cpus}")
    resolve(args.model, tiny_checkpoint, "reward model")  # a bad --model fails here, not in every replica
    options = ray_deploy.RayOptions(replicas=replicas, replica_cpus=cpus, gpus=gpus, host=args.host, port=args.port)
    ray_deploy.serve_until_signal(args.model, settings, options, args.device, args.dtype)
