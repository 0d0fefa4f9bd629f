"""Where a method's few concept images come from: the registry of image sources.

A track names its source (``Track.images``): ``render`` (a ConceptWorld draws the concept), ``generate`` (the
original model, on recorded seeds), or any other string, a folder holding one sub-folder per concept. A source
is a function ``(track, concept, protocol, pipe, held_out) -> (images or None, record)``: the images (None until
``pipe`` is given, where the source needs the model) and a record of where they came from (part of the run
spec). ``held_out`` asks for a set disjoint from the erasure's, for attacks. Outside packages add sources
through the ``erasebench.image_sources`` entry-point group; the harness never imports a source itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.api.registry import Registry, load_target, named_registry

ENTRY_POINT_GROUP = "erasebench.image_sources"
_BUILTIN = {
    "render": "bench.world.sources:rendered",
    "generate": "bench.run.sources:generated",
}
FOLDER_SOURCE = "bench.run.sources:from_folder"  # a name that is no registered source is a folder
_REGISTRY: Registry | None = None

ImageSource = Callable[..., tuple[Any, dict[str, Any]]]


def source_registry(refresh: bool = False) -> Registry:
    """Image sources by name (built in, then the ``erasebench.image_sources`` entry points)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = named_registry("image source", _BUILTIN, ENTRY_POINT_GROUP)
    return _REGISTRY


def image_source(name: str) -> ImageSource:
    """The source ``name`` registers, or the folder source for any other string."""
    reg = source_registry()
    return reg.get(name) if name in reg else load_target(FOLDER_SOURCE, "image source 'folder'")
