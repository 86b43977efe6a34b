"""Adapters that plug rdfast into RL and data frameworks; each imports its framework lazily."""
