"""Erasure methods: one module per method, each exposing ``METHOD`` (an ``bench.api.method.Eraser``).

The registry finds modules here by name without importing them; see ``bench.api.method``.
"""
