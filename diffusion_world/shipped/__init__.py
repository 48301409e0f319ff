"""The world models shipped with the package: ``<name>.pt`` (fp16 EMA weights and reset contexts) and
``<name>.json`` (how it was made, and its benchmark results)."""
