"""The reward server's HTTP face: JSON endpoints, the Flow-GRPO pickle protocol, health and metrics.

    GET  /health       {"status": "ok", "model", "yes_token_id", "no_token_id"}
    GET  /metrics      Prometheus text
    POST /v1/score     {"images": [base64 PNG/JPEG], "prompts": [...], "instruction"?} -> {"scores": [...]}
    POST /v1/compare   {"images1", "images2", "prompts", "instruction"?, "debias"?}      -> {"scores": [...]}
    POST /v1/rank      {"candidates", "prompt", "top_k"?}     -> {"order", "wins", "top", "win_prob"} (groups.py)
    POST /v1/group     {"candidates", "prompt", "reference"? | "reference_mode"?}
                       -> {"scores", "mean", "std", "saturated_fraction"}                        (groups.py)
    POST /             Flow-GRPO: pickled {"images": [JPEG bytes], "prompts": [...]} -> pickled {"outputs": [...]}

Errors: 400 a bad item ({"error", "field", "index"}), 401 a missing or wrong API key, 413 a body or image over
the limits, 422 a field missing or of the wrong type, 503 (with Retry-After) a full queue. The Flow-GRPO path
answers the same error dict pickled with the same 4xx status; its client retries HTTP 500 only, so on that
path a full queue holds the request up to ``flow_grpo_wait_s`` and then answers 500, never 503.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import pickle
import time
from dataclasses import dataclass

from ..errors import InputError
from .batcher import Batcher, Job, QueueFull
from .groups import group_request, rank_request
from .metrics import Metrics
from .protocol import SchemaError, TooLarge, check_texts, decode_base64_images, json_field, parse_flow_grpo

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
except ImportError:  # the optional extra rdfast[serve]
    FastAPI = None


@dataclass
class ServeSettings:
    """How the server batches and what it accepts (the ``rdfast serve`` flags)."""

    max_batch: int = 64
    max_wait_ms: float = 5.0
    queue_size: int = 256
    max_body_bytes: int = 64 << 20
    max_pixels: int = 40_000_000
    api_key: str | None = None
    flow_grpo_wait_s: float = 60.0
    model_name: str = ""


class HTTPError(Exception):
    """An answer other than 200: status, message and where in the request it points."""

    def __init__(self, status: int, message: str, field: str | None = None, index: int | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.index, self.headers = status, field, index, headers or {}

    def payload(self) -> dict:
        return {"error": str(self), "field": self.field, "index": self.index}


def _as_http_error(err: InputError) -> HTTPError:
    status = 413 if isinstance(err, TooLarge) else 422 if isinstance(err, SchemaError) else 400
    return HTTPError(status, str(err), err.field, err.index)


def model_runner(rm):
    """The batcher's model call for ``rm``: a key ("score" | "compare", instruction, debias) and its items."""

    def run(key: tuple, columns: list[list], prompts: list[str]) -> list[float]:
        mode, instruction, debias = key
        if mode == "score":
            scores = rm.score(images=columns[0], prompts=prompts, instruction=instruction)
        else:
            scores = rm.compare(images1=columns[0], images2=columns[1], prompts=prompts, instruction=instruction,
                                debias=debias)
        return scores.detach().float().cpu().tolist()

    return run


def create_app(rm, settings: ServeSettings | None = None, run_batch=None):
    """A FastAPI app serving ``rm``.

    Args:
        rm: a loaded ``RewardModel``.
        settings: limits and batching (defaults: ``ServeSettings()``).
        run_batch: the batch call (default: ``model_runner(rm)``); tests may wrap it.
    Returns:
        The app; its batcher starts and drains with the app's lifespan. ``app.state.metrics`` holds the metrics.
    """
    if FastAPI is None:
        raise ImportError("rdfast serve needs FastAPI, uvicorn and prometheus-client: pip install 'rdfast[serve]'")
    settings = settings or ServeSettings()
    metrics = Metrics()
    holder: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(run_batch or model_runner(rm), settings.max_batch, settings.max_wait_ms,
                          settings.queue_size, metrics)
        batcher.start()
        holder["batcher"] = batcher
        yield
        await batcher.stop()  # drain: every accepted request is answered

    app = FastAPI(title="rdfast reward server", lifespan=lifespan)
    app.state.metrics, app.state.settings = metrics, settings

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise HTTPError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                            headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPError(413, f"the body is {length} bytes, more than the limit of {limit}", "body")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the body is more than the limit of {limit} bytes", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(request: Request) -> dict:
        try:
            body = json.loads(await read_body(request))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HTTPError(400, f"the body is not valid JSON: {err}", "body") from None
        if not isinstance(body, dict):
            raise HTTPError(422, f"expected a JSON object, got {type(body).__name__}", "body")
        return body

    async def scores_of(job: Job, endpoint: str, wait_s: float) -> list[float]:
        try:
            scores = await holder["batcher"].submit(job, wait_s)
        except QueueFull as err:
            if wait_s > 0:  # the Flow-GRPO path: its client retries 500
                raise HTTPError(500, f"busy: {err}; retry") from None
            raise HTTPError(503, f"busy: {err}; retry later", headers={"Retry-After": "1"}) from None
        metrics.items.labels(endpoint).inc(len(scores))
        return scores

    async def handle(endpoint: str, request: Request, work, pickled: bool = False):
        start = time.perf_counter()
        try:
            authorize(request)
            status, payload, headers = 200, await work(request), {}
        except InputError as err:
            http = _as_http_error(err)
            status, payload, headers = http.status, http.payload(), http.headers
        except HTTPError as err:
            status, payload, headers = err.status, err.payload(), err.headers
        except Exception as err:  # a bug or a device failure: the request gets a 500, the server goes on
            status, payload, headers = 500, {"error": f"internal error: {type(err).__name__}: {err}"}, {}
        metrics.requests.labels(endpoint, str(status)).inc()
        if status != 200:
            metrics.errors.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        if pickled:
            return Response(pickle.dumps(payload), status_code=status, headers=headers,
                            media_type="application/octet-stream")
        return JSONResponse(payload, status_code=status, headers=headers)

    async def score_work(request: Request) -> dict:
        body = await read_json(request)
        images = json_field(body, "images", list)
        prompts = json_field(body, "prompts", list)
        instruction = json_field(body, "instruction", str, required=False)
        decoded = await asyncio.to_thread(decode_base64_images, images, "images", settings.max_pixels)
        prompts = check_texts(rm.encoder.reserved, prompts, instruction, len(decoded))
        job = Job(("score", instruction, False), [decoded], prompts)
        return {"scores": await scores_of(job, "score", 0)}

    async def compare_work(request: Request) -> dict:
        body = await read_json(request)
        first, second = json_field(body, "images1", list), json_field(body, "images2", list)
        prompts = json_field(body, "prompts", list)
        instruction = json_field(body, "instruction", str, required=False)
        debias = bool(json_field(body, "debias", bool, required=False))
        if len(first) != len(second):
            raise SchemaError(f"has {len(second)} items but images1 has {len(first)}", field="images2")
        decoded1 = await asyncio.to_thread(decode_base64_images, first, "images1", settings.max_pixels)
        decoded2 = await asyncio.to_thread(decode_base64_images, second, "images2", settings.max_pixels)
        prompts = check_texts(rm.encoder.reserved, prompts, instruction, len(decoded1))
        job = Job(("compare", instruction, debias), [decoded1, decoded2], prompts)
        return {"scores": await scores_of(job, "compare", 0)}

    async def rank_work(request: Request) -> dict:
        body = await read_json(request)
        return await rank_request(body, rm, settings.max_pixels, lambda job: scores_of(job, "rank", 0))

    async def group_work(request: Request) -> dict:
        body = await read_json(request)
        return await group_request(body, rm, settings.max_pixels, lambda job: scores_of(job, "group", 0),
                                   metrics)

    async def flow_grpo_work(request: Request) -> dict:
        body = await read_body(request)
        decoded, prompts = await asyncio.to_thread(parse_flow_grpo, body, settings.max_pixels)
        prompts = check_texts(rm.encoder.reserved, prompts, None, len(decoded))
        job = Job(("score", None, False), [decoded], prompts)
        return {"outputs": await scores_of(job, "flow_grpo", settings.flow_grpo_wait_s)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "yes_token_id": rm.yes_token_id,
                "no_token_id": rm.no_token_id}

    @app.get("/metrics")
    async def prometheus(request: Request):
        try:
            authorize(request)
        except HTTPError as err:
            return JSONResponse(err.payload(), status_code=err.status, headers=err.headers)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/score")
    async def score(request: Request):
        return await handle("score", request, score_work)

    @app.post("/v1/compare")
    async def compare(request: Request):
        return await handle("compare", request, compare_work)

    @app.post("/v1/rank")
    async def rank(request: Request):
        return await handle("rank", request, rank_work)

    @app.post("/v1/group")
    async def group(request: Request):
        return await handle("group", request, group_work)

    @app.post("/")
    async def flow_grpo(request: Request):
        return await handle("flow_grpo", request, flow_grpo_work, pickled=True)

    return app
