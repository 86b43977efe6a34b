"""Adapters that plug rdfast into RL loops for diffusion and flow models (a side package: the core never imports it).

| module        | for                                                                                  |
|---------------|--------------------------------------------------------------------------------------|
| flow_grpo.py  | Flow-GRPO: ``flow_grpo(rm_or_url)`` -> ``fn(images, prompts, metadata) -> (scores, info)`` |
| verl_omni.py  | verl-omni's visual reward loop: ``compute_score(data_source, solution_image, ...)``, async  |
"""
from .flow_grpo import flow_grpo
from .verl_omni import compute_score

__all__ = ["flow_grpo", "compute_score"]
