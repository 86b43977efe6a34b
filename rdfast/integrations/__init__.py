"""Adapters that plug rdfast into RL and data frameworks (Flow-GRPO, verl-omni, Ray); each imports its framework lazily."""
