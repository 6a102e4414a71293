"""Experiments and rollouts: a registry of releases, A/B tests with honest statistics, canaries."""
