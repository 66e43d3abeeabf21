"""Metrics, classical reconstruction baselines, benchmark helpers and figures."""
