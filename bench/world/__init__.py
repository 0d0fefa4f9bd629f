"""ConceptWorld: a small world the benchmark owns (renderer, captions, SD-format model, judge)."""
