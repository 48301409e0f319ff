"""Benchmarks (``diffusion-world benchmark ...`` and the scripts in ``benchmarks/``)."""
