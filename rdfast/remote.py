"""``RemoteRewardModel``: a reward model behind ``rdfast serve``, called like an in-process ``RewardModel``.

    rm = rdfast.RemoteRewardModel("http://127.0.0.1:8000")
    rm.score(images=images, prompts=prompts)                  # float32 [N], as RewardModel.score
    rm.compare(images1=refs, images2=cands, prompts=prompts)  # P(image 2 better than image 1)
    rm.rank(candidates=images, prompt="a fox")                # RankResult, as RewardModel.rank
    rm.group(candidates=images, prompt="a fox", reference_mode="best_of_n")   # a GRPO group and its telemetry

Images may be anything ``rdfast.wire`` sends (PIL, paths, tensors, numpy arrays); float pixels travel rounded to
8 bits. A full server (HTTP 503) is retried after its ``Retry-After``, a refused or dropped connection after an
exponential backoff, both at most ``retries`` times; a bad request raises ``RemoteInputError`` (an
``InputError`` naming the field and item, as in-process scoring would) and other failures ``RemoteError``. Plain
standard-library HTTP: the client needs no extra package.
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from .errors import InputError
from .ranking import RankResult
from .wire import encode_images

#: a Retry-After longer than this is waited only this long (a misconfigured server must not stall a trainer)
MAX_RETRY_AFTER_S = 60.0


class RemoteError(RuntimeError):
    """The server failed, refused the API key, or stayed unreachable; ``status`` is the HTTP status (None: none)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RemoteInputError(InputError):
    """The server refused an item or field of the request (HTTP 400, 413 or 422)."""

    def __init__(self, message: str, index: int | None, field: str | None, status: int):
        super().__init__(message, index, field)
        self.status = status


@dataclass
class GroupResult:
    """A GRPO group's scores (float32 [N]) and telemetry: mean, std (ddof 0), share of scores < 0.01 or > 0.99."""

    scores: torch.Tensor
    mean: float
    std: float
    saturated_fraction: float


def _retry_after(error: urllib.error.HTTPError, default: float) -> float:
    try:
        return min(max(float(error.headers.get("Retry-After", default)), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date instead of seconds: fall back to the backoff
        return default


class RemoteRewardModel:
    """A client of ``rdfast serve`` with ``RewardModel``'s scoring calls.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY`` (the server's ``--api-key``).
        timeout: seconds to wait for one answer.
        retries: how many times a 503 or a connection error is retried before ``RemoteError``.
        backoff_s: the first wait after a connection error; it doubles each time, up to ``max_backoff_s``.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0, retries: int = 5,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if retries < 0 or timeout <= 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0, got {retries} and {timeout}")
        self.url = url.rstrip("/")
        self.api_key, self.timeout, self.retries = api_key, timeout, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s

    def __repr__(self) -> str:
        return f"RemoteRewardModel({self.url!r})"

    # ---- scoring ----------------------------------------------------------------------------------------
    def score(self, images=None, prompts=None, instruction=None) -> torch.Tensor:
        """Pointwise P(yes) per image, as ``RewardModel.score``: float32 [N] on the CPU."""
        body = {"images": encode_images(images, "images"), "prompts": _texts(prompts), "instruction": instruction}
        return torch.tensor(self._post("/v1/score", body)["scores"], dtype=torch.float32)

    def compare(self, images1=None, images2=None, prompts=None, instruction=None, debias=False) -> torch.Tensor:
        """P(image 2 better than image 1) per pair, as ``RewardModel.compare``: float32 [N] on the CPU."""
        body = {"images1": encode_images(images1, "images1"), "images2": encode_images(images2, "images2"),
                "prompts": _texts(prompts), "instruction": instruction, "debias": bool(debias)}
        return torch.tensor(self._post("/v1/compare", body)["scores"], dtype=torch.float32)

    def rank(self, candidates=None, prompt=None, top_k=1, instruction=None) -> RankResult:
        """Best-of-N by pairwise wins, as ``RewardModel.rank``."""
        body = {"candidates": encode_images(candidates, "candidates"), "prompt": prompt, "top_k": top_k,
                "instruction": instruction}
        got = self._post("/v1/rank", body)
        return RankResult(order=got["order"], wins=torch.tensor(got["wins"]),
                          win_prob=torch.tensor(got["win_prob"], dtype=torch.float32), top=got["top"])

    def group(self, candidates=None, prompt=None, reference=None, reference_mode=None, instruction=None) -> GroupResult:
        """One GRPO group scored as a unit: against ``reference`` (one image), against the group's own Best-of-N
        (``reference_mode="best_of_n"``), or alone when the served model is pointwise."""
        body = {"candidates": encode_images(candidates, "candidates"), "prompt": prompt,
                "reference_mode": reference_mode, "instruction": instruction}
        if reference is not None:
            body["reference"] = encode_images([reference], "reference")[0]
        got = self._post("/v1/group", body)
        return GroupResult(scores=torch.tensor(got["scores"], dtype=torch.float32), mean=got["mean"], std=got["std"],
                           saturated_fraction=got["saturated_fraction"])

    def health(self) -> dict:
        """The server's ``/health`` answer (status, model, answer token ids)."""
        return self._request("GET", "/health", None)

    # ---- transport --------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, json.dumps({k: v for k, v in body.items() if v is not None}).encode())

    def _request(self, method: str, path: str, data: bytes | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        wait, last = self.backoff_s, None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code != 503:
                    raise _error_of(err, path) from None
                last, pause = f"HTTP 503 ({_message(err)})", _retry_after(err, wait)
            except (urllib.error.URLError, ConnectionError, http.client.RemoteDisconnected) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, TimeoutError):
                    raise RemoteError(f"{self.url}{path}: no answer within {self.timeout} s") from None
                last, pause = f"{type(reason).__name__}: {reason}", wait
            except TimeoutError:
                raise RemoteError(f"{self.url}{path}: no answer within {self.timeout} s") from None
            if attempt < self.retries:
                time.sleep(pause)
                wait = min(wait * 2, self.max_backoff_s)
        raise RemoteError(f"{self.url}{path}: unavailable after {self.retries + 1} tries (last: {last})",
                          503 if last and last.startswith("HTTP 503") else None)


def _texts(prompts):
    """Prompts as a JSON list (tuples and numpy arrays of str included); anything else goes as is, for the server
    to name."""
    if prompts is None or isinstance(prompts, str):
        return prompts
    if hasattr(prompts, "tolist"):  # a numpy array, as Flow-GRPO's loops pass them
        prompts = prompts.tolist()
    if isinstance(prompts, (list, tuple)):
        return [p.decode() if isinstance(p, bytes) else p for p in prompts]
    return prompts


def _message(err: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(err.read())
    except Exception:  # not our server's JSON: no detail to add
        return err.reason
    return payload.get("error", err.reason) if isinstance(payload, dict) else err.reason


def _error_of(err: urllib.error.HTTPError, path: str) -> Exception:
    """The exception for a non-503 error answer: RemoteInputError for a bad request, RemoteError otherwise."""
    try:
        payload = json.loads(err.read())
    except Exception:  # not our server's JSON
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    message = payload.get("error") or str(err.reason)
    if err.code in (400, 413, 422):
        field, index = payload.get("field"), payload.get("index")
        where = f"{field}[{index}]: " if field is not None and index is not None else f"{field}: "
        if field is not None and message.startswith(where):  # InputError adds the place again
            message = message[len(where):]
        return RemoteInputError(message, index, field, err.code)
    if err.code == 401:
        return RemoteError(f"{path}: HTTP 401: {message} (pass api_key=)", 401)
    return RemoteError(f"{path}: HTTP {err.code}: {message}", err.code)
