"""The command line: ``python -m bench ...`` (main) and ``python -m bench.world ...`` (world)."""
