"""Measurements for developers: Ray against one process (scaleout), one step at Stable Diffusion size (fullsize)."""
