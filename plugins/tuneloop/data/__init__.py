"""Dataset validation for every Nova format: strict, streaming, fast."""
