"""Training loop: EMA, resume, data-parallel, fine-tuning."""
