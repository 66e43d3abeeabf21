"""Noise schedules, training losses, samplers and data-consistency steps."""
