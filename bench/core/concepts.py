"""Concepts and versioned concept sets (YAML), validated on load.

A concept carries everything a method or the harness needs to prompt for it: its type,
the templates that make target prompts, synonyms and held-out paraphrases (robustness), the
near-neighbours and retain sets (collateral damage) and its dev/test split.
"""

from __future__ import annotations

import difflib
import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.core.errors import ConfigError, InputError, shown

CONCEPT_TYPES = ("object", "style", "character", "colour")
SPLITS = ("dev", "test")
# Bounds on a concept-set file (the largest committed set: 24 KB, 32 concepts, 6 levels deep): past them
# the pure-Python YAML reader and the per-concept defaults (quadratic in the concepts) take minutes
MAX_BYTES = 1_000_000
MAX_CONCEPTS = 1_000
MAX_DEPTH = 50  # nested lists and mappings (Python's own recursion gives out near 500)
MAX_EXPANDED = 2_000_000  # values plus characters once every alias (*name) is expanded ("billion laughs")

# Our own wording. Objects read as "a photo of a {}", styles as "... in the style of {}".
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a rendering of a {}",
    "a close-up photo of a {}",
    "a bright photo of a {}",
    "a dark photo of a {}",
    "a small {}",
    "a large {}",
    "a photo of the {}",
    "a cropped photo of a {}",
    "a good photo of a {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "an artwork in the style of {}",
    "a picture in the style of {}",
    "a drawing in the style of {}",
    "an illustration in the style of {}",
    "a rendering in the style of {}",
    "a {} style image",
    "art by {}",
)
CHARACTER_TEMPLATES = ("a picture of {}", "an image of {}", "a portrait of {}", "{}")
DEFAULT_TEMPLATES = {
    "object": OBJECT_TEMPLATES,
    "style": STYLE_TEMPLATES,
    "character": CHARACTER_TEMPLATES,
    "colour": ("a {} thing", "something {}", "a {} object"),
}


@dataclass(frozen=True)
class Composed:
    """A target prompt that names the concept with other attributes ("a striped red star"), and
    those other attributes as {judge head: label} (``{"style": "striped", "colour": "red"}``):
    selective alignment asks whether the judge still sees them after the concept is erased."""

    prompt: str
    attributes: Mapping[str, str] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "attributes": dict(self.attributes)}


@dataclass(frozen=True)
class Concept:
    """One concept to erase; ``prompts()`` renders its target prompts from the templates."""

    name: str
    type: str = "object"
    templates: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    paraphrases: tuple[str, ...] = ()
    near_neighbours: tuple[str, ...] = ()
    retain_in_domain: tuple[str, ...] = ()
    retain_cross_domain: tuple[str, ...] = ()
    split: str = "test"
    composed: tuple[Composed, ...] = ()  # composed target prompts (selective alignment); may be none
    # What a method that needs them may use (the benchmark's fairness rules: never the evaluation's
    # retain prompts). ``anchor``: the word that takes the concept's place in its templates to make an
    # anchor prompt (its super-category; "" = the template with the concept left out). ``preserve``:
    # prompts to keep; when the set does not declare them, the plain prompts of the set's *dev*
    # concepts of the other types.
    anchor: str = ""
    preserve: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InputError(f"concept name must be a string (a word or phrase), got {self.name!r}")
        if not self.name.strip():
            raise InputError("concept name is empty: give the concept to erase, e.g. --concept 'golf ball'")
        if self.type not in CONCEPT_TYPES:
            raise InputError(f"concept {self.name!r}: type {self.type!r} is not one of {CONCEPT_TYPES}")
        if self.split not in SPLITS:
            raise InputError(f"concept {self.name!r}: split {self.split!r} is not one of {SPLITS}")
        if not isinstance(self.anchor, str):
            raise InputError(f"concept {self.name!r}: anchor must be a string (a word, or \"\"), got {self.anchor!r}")
        for t in self.templates:
            if t.count("{}") != 1:
                raise InputError(f"concept {self.name!r}: template {t!r} must contain exactly one '{{}}'")
            try:  # a second field ("{0}", "{x}", "{.x}", "{[a]}") or a lone brace fails here, not in a run
                t.format("")
            except (ValueError, LookupError, AttributeError, TypeError):
                raise InputError(f"concept {self.name!r}: template {t!r} has a brace other than its one '{{}}'; "
                                 "write a literal brace as '{{' or '}}'") from None
        if not self.templates:
            object.__setattr__(self, "templates", DEFAULT_TEMPLATES[self.type])

    def prompts(self, word: str | None = None) -> list[str]:
        """Target prompts: every template filled with ``word`` (default: the concept's name)."""
        return [t.format(self.name if word is None else word) for t in self.templates]

    def anchor_prompts(self) -> list[str]:
        """The templates filled with the anchor (whitespace collapsed when the anchor is empty)."""
        return [" ".join(p.split()) for p in self.prompts(self.anchor)]


@dataclass(frozen=True)
class ConceptSet:
    """A named, versioned list of concepts; ``id`` is stable across machines (content hash)."""

    name: str
    version: str
    concepts: tuple[Concept, ...]
    sha256: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def names(self, split: str | None = None) -> list[str]:
        return [c.name for c in self.concepts if split is None or c.split == split]

    def get(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        hint = difflib.get_close_matches(name, self.names(), n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise InputError(f"unknown concept {name!r} in concept set {self.id}{suggestion}")


_CONCEPT_KEYS = {f for f in Concept.__dataclass_fields__ if f != "extra"}


def _composed(where: str, value: Any) -> tuple[Composed, ...]:
    """``composed``: a list of {prompt: str, attributes: {head: label, ...}} (at least one attribute)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'composed' must be a list of {{prompt, attributes}} mappings, got {value!r}")
    out = []
    for i, item in enumerate(value):
        at = f"{where}: composed[{i}]"
        if not isinstance(item, dict) or set(item) != {"prompt", "attributes"}:
            raise ConfigError(f"{at}: must be a mapping with exactly 'prompt' and 'attributes', got {item!r}")
        prompt, attrs = item["prompt"], item["attributes"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{at}: 'prompt' must be a non-empty string, got {prompt!r}")
        if (not isinstance(attrs, dict) or not attrs
                or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in attrs.items())):
            raise ConfigError(f"{at}: 'attributes' must map judge heads to labels (strings), at least one, "
                              f"got {attrs!r}")
        out.append(Composed(prompt, dict(attrs)))
    return tuple(out)


def _as_str_tuple(where: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of strings, got {value!r}")
    return tuple(value)


def parse_concept_set(data: Any, source: str = "<concept set>") -> ConceptSet:
    """Validate a parsed YAML document and build the ConceptSet; errors name the bad entry."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping with name, version, concepts")
    for key in ("name", "version", "concepts"):
        if key not in data:
            raise ConfigError(f"{source}: missing top-level key '{key}'")
    for key, eg in (("name", "my-concepts"), ("version", "'1.0'")):
        value = data[key]
        if value is None or isinstance(value, (list, dict, set, bytes)) or len(str(value).strip().splitlines()) != 1:
            raise ConfigError(f"{source}: '{key}' must be one line of text, e.g. {key}: {eg}, got {value!r}")
    if not isinstance(data["concepts"], list) or not data["concepts"]:
        raise ConfigError(f"{source}: 'concepts' must be a non-empty list")
    if len(data["concepts"]) > MAX_CONCEPTS:
        raise ConfigError(f"{source}: {len(data['concepts']):,} concepts; a concept set holds at most "
                          f"{MAX_CONCEPTS:,} (split it into several sets)")
    concepts = []
    for i, entry in enumerate(data["concepts"]):
        where = f"{source}: concepts[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: each concept must be a mapping with a 'name'")
        where = f"{source}: concept {entry['name']!r}"
        unknown = set(entry) - _CONCEPT_KEYS - {"extra"}
        if unknown:
            key = sorted(unknown, key=repr)[0]
            hint = difflib.get_close_matches(key, sorted(_CONCEPT_KEYS), n=1) if isinstance(key, str) else []
            raise ConfigError(f"{where}: unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        kwargs: dict[str, Any] = {"name": entry["name"]}
        for key in ("type", "split", "anchor"):
            if key in entry:
                kwargs[key] = entry[key]
        for key in _CONCEPT_KEYS - {"name", "type", "split", "anchor", "composed"}:
            if key in entry:
                kwargs[key] = _as_str_tuple(where, key, entry[key])
        if "composed" in entry:
            kwargs["composed"] = _composed(where, entry["composed"])
        if "extra" in entry:
            if not isinstance(entry["extra"], dict):
                raise ConfigError(f"{where}: 'extra' must be a mapping (key: value), got {entry['extra']!r}")
            kwargs["extra"] = dict(entry["extra"])
        try:
            concepts.append(Concept(**kwargs))
        except InputError as e:
            raise ConfigError(f"{source}: {e}") from None
    names = [c.name for c in concepts]
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)
    if dupes:
        raise ConfigError(f"{source}: concept {dupes[0]!r} is listed more than once")
    known = set(names)
    for c in concepts:
        for key in ("near_neighbours", "retain_in_domain", "retain_cross_domain"):
            for ref in getattr(c, key):
                if ref not in known:
                    raise ConfigError(f"{source}: concept {c.name!r}: {key} names unknown concept {ref!r}")
    return ConceptSet(name=str(data["name"]), version=str(data["version"]), concepts=_default_preserve(concepts))


def _default_preserve(concepts: list[Concept]) -> tuple[Concept, ...]:
    """Give every concept without a declared ``preserve`` list the plain prompts of the set's dev
    concepts of the other types (of its own type in a one-type set), leaving out the concepts its own
    evaluation names (near-neighbours, retain sets): a rule of the set, so every method reads one list."""
    import dataclasses

    out = []
    for c in concepts:
        if not c.preserve:
            evaluated = {c.name, *c.near_neighbours, *c.retain_in_domain, *c.retain_cross_domain}
            dev = [d for d in concepts if d.split == "dev" and d.name not in evaluated]
            pool = [d for d in dev if d.type != c.type] or dev
            c = dataclasses.replace(c, preserve=tuple(d.prompts()[0] for d in pool))
        out.append(c)
    return tuple(out)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses nesting past ``MAX_DEPTH`` while it composes (before Python's
    recursion gives out) and a document that aliases expand past ``MAX_EXPANDED`` before building it."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nested deeper than {MAX_DEPTH} levels of lists and mappings (at line "
                                  f"{mark.line + 1}, column {mark.column + 1}); write the nested parts out")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        _expanded(node, 0, {})
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # a key written twice in one mapping: YAML readers silently keep the last value; we refuse it
        keys = [(k.tag, k.value) for k, _ in node.value
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            mark = node.start_mark
            raise ConfigError(f"the key {twice[1]!r} is written twice in the mapping at line {mark.line + 1}; "
                              "keep one")
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> int:
        # hex, octal and binary integers have no length limit, but str() (every message) refuses past 4300 digits
        if len(node.value) > 1000:
            raise ConfigError(f"an integer of {len(node.value):,} characters at line {node.start_mark.line + 1}; "
                              "quote it if it is text")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _expanded(node: Any, depth: int, seen: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values and characters, levels) under ``node`` with every alias expanded, refused past
    ``MAX_EXPANDED`` or ``MAX_DEPTH`` levels below the top (an alias inside itself never ends: too deep)."""
    if id(node) not in seen:
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels of lists and mappings once aliases (*name) "
                              "are expanded (or an alias refers to itself); write the nested parts out")
        if isinstance(node, yaml.ScalarNode):
            seen[id(node)] = (1 + len(node.value), 0)
        else:
            children = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else node.value
            below = [_expanded(child, depth + 1, seen) for child in children]
            seen[id(node)] = (1 + sum(size for size, _ in below), 1 + max((levels for _, levels in below), default=0))
    size, levels = seen[id(node)]
    if size > MAX_EXPANDED:
        raise ConfigError(f"aliases (*name) expand it past {MAX_EXPANDED:,} values and characters; "
                          "write the repeated parts out, or repeat fewer of them")
    if depth + levels > MAX_DEPTH:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels of lists and mappings once aliases (*name) "
                          "are expanded; write the nested parts out")
    return size, levels


def _yaml_problem(e: Exception) -> str:
    """A YAML error in one line: what is wrong and where (the reader's own text spans several lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        text = f"{e.context + ': ' if e.context else ''}{e.problem}{where}"
    elif isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        text = f"unacceptable character #x{code:04x}: {e.reason} at position {e.position}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def load_concept_set(path: str | Path) -> ConceptSet:
    """Load and validate a concept-set YAML file (``_BoundedLoader``: safe tags only, bounded size)."""
    path = Path(path)
    name = shown(path)
    try:
        if not path.is_file():
            raise InputError(f"concept set file not found: {name}")
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{name}: {path.stat().st_size:,} bytes; a concept set is at most {MAX_BYTES:,} "
                              "(split it into several sets)")
        raw = path.read_bytes()
    except OSError as e:  # a name too long, a folder not readable
        raise InputError(f"cannot read concept set {name}: {e.strerror or e}") from None
    loader = None
    try:
        loader = _BoundedLoader(raw)
        data = loader.get_single_data()
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    except (yaml.YAMLError, ValueError, LookupError, TypeError, OverflowError, RecursionError) as e:
        # ValueError: a date like 2001-13-45, bytes not UTF-8/16/32; KeyError: !!bool maybe
        raise ConfigError(f"{name}: not valid YAML ({_yaml_problem(e)})") from None
    finally:
        if loader is not None:
            loader.dispose()
    cs = parse_concept_set(data, source=name)
    return ConceptSet(cs.name, cs.version, cs.concepts, sha256=hashlib.sha256(raw).hexdigest())
