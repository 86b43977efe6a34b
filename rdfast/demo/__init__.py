"""``rdfast demo``: the README's main job.

| module     | job |
|---|---|
| toy.py     | ``run_toy_demo``: the trained toy-world models generate, score, rank and search, checked by the oracle |
| scoring.py | ``run_scoring_demo``: one reward model (e.g. an untrained ``tiny:`` one) on random images |
"""
from .scoring import run_scoring_demo
from .toy import run_toy_demo

__all__ = ["run_scoring_demo", "run_toy_demo"]
