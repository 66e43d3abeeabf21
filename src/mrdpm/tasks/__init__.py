"""End-to-end pipelines: accelerated reconstruction, MR fingerprinting, ultra-low-field."""
