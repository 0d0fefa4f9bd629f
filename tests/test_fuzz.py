"""Property-based fuzzing of the four entry points that parse user input (seeded, time-bounded).

Property, for every entry point: an input either parses into a valid object or raises the project's
one-line user error (``BenchError``: ``ConfigError``, ``InputError``, ...); never another exception,
never a multi-line message, never a hang (each case runs under a SIGALRM bound, ``CASE_SECONDS``).

1. the CLI parser of every subcommand (argv from a grammar of each subparser's real options; ``run``,
   ``tune`` and ``sweep`` also build their Bench and plan its grid, loading no model and writing nothing);
2. ``--set KEY=VALUE`` / ``--grid KEY=V1,V2`` values into a registered method's config;
3. the concept-set YAML loader;
4. the few-shot image-folder reader.

``FUZZ_EXAMPLES=N`` runs N cases per entry point (default ``DEFAULT_EXAMPLES``: 1,600 in all, about 20 s
on 2 cores) and prints the cases each entry point ran at the end of the module (run it with -p no:xdist to
see the line); every run is deterministic (``derandomize``). ``tests/fuzz/`` holds every input that failed
on the way (a .yaml, or a .json with an argv list or override pairs); ``test_replay`` runs each through its
entry point with the same property. Inputs too large for a file there are ``@example`` s of their test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import os
import signal
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from bench.api.config import parse_grid, parse_overrides
from bench.api.method import build_method, get_method, leaderboard_specs
from bench.cli.main import bench_from_args, build_parser
from bench.core.concepts import SPLITS, ConceptSet, load_concept_set
from bench.core.errors import BenchError
from bench.core.images import IMAGE_SUFFIXES, load_images, read_image
from bench.core.paths import ROOT

# PIL warns about the corrupt files it is fed here (bad EXIF, truncated chunks); the property is the error
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

FUZZ_DIR = Path(__file__).parent / "fuzz"
CASE_SECONDS = 10  # the bound on one case: a case that takes longer is a hang
_LONG = os.environ.get("FUZZ_EXAMPLES")
# the default keeps the whole file near half a minute on 2 cores (make test); FUZZ_EXAMPLES for long runs
DEFAULT_EXAMPLES = {"cli": 300, "overrides": 400, "concepts": 300, "images": 600}
COUNTS: Counter[str] = Counter()


def _settings(entry: str) -> settings:
    return settings(max_examples=int(_LONG) if _LONG else DEFAULT_EXAMPLES[entry], derandomize=True,
                    deadline=None, database=None, print_blob=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: it traces
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


class CaseTimeout(BaseException):
    """A case ran past ``CASE_SECONDS`` (a BaseException, so no ``except Exception`` under test swallows it)."""


@contextlib.contextmanager
def time_bound(seconds: float = CASE_SECONDS):
    """Raise ``CaseTimeout`` in the main thread when the block runs longer than ``seconds`` (SIGALRM)."""
    def _fire(signum, frame):
        raise CaseTimeout(f"case ran past {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def holds(entry: str, fn, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` under the time bound: its value, or None when it raised a one-line ``BenchError``.
    Any other exception (or a hang) propagates and fails the test."""
    COUNTS[entry] += 1
    with time_bound():
        try:
            out = fn(*args, **kwargs)
        except BenchError as e:
            message = str(e)
            assert "\n" not in message, f"{type(e).__name__} message spans lines: {message[:2000]!r}"
            _event(f"{entry}: {type(e).__name__}")
            return None
    _event(f"{entry}: accepted")
    return out


def _event(text: str) -> None:
    """A hypothesis statistics event (--hypothesis-show-statistics); the replay test runs outside hypothesis."""
    if currently_in_test_context():
        event(text)


@pytest.fixture(scope="module", autouse=True)
def _isolated_cwd(request):
    """Run in an empty temporary working directory and check nothing was written into it (relative
    defaults such as ``runs/bench`` would land there); print the case counts of a long run."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="fuzz-cwd-") as tmp:
        os.chdir(tmp)
        try:
            yield
            left = sorted(p.name for p in Path(tmp).iterdir())
        finally:
            os.chdir(old)
    assert not left, f"the fuzzed entry points wrote into the working directory: {left}"
    if _LONG:
        line = "fuzz cases per entry point: " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items()))
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            print(line)


# -- shared value pools ------------------------------------------------------------------------------

SPECS = leaderboard_specs()
FIELDS = {spec: [f for f in get_method(spec.partition("@")[0]).Config().to_dict()] for spec in SPECS}
WORLD3 = ROOT / "datasets" / "conceptworld3"
COMMITTED_SET = WORLD3 / "concepts.yaml"
COMMITTED = yaml.safe_load(COMMITTED_SET.read_text())
CONCEPT_NAMES = [c["name"] for c in COMMITTED["concepts"]]
CONCEPT_KEYS = ["name", "type", "templates", "synonyms", "paraphrases", "near_neighbours", "retain_in_domain",
                "retain_cross_domain", "split", "composed", "anchor", "preserve", "extra"]

WEIRD = ["", " ", "-", "--", ",", ",,", "a,", ",a", "a,,b", "0", "-1", "1", "007", "1e309", "-1e309", "nan",
         "NaN", "inf", "-inf", "1e-5", "2e-5", "0.5", "1_000", "0x10", "9" * 5000, "1" + "0" * 400, "x" * 20_000,
         "\n", "a\nb", "\r", "\t", "\x00", "é", "🙂", "日本語", "\u2028", "true", "false", "null", "[]", "{}",
         "[" * 200, "[[1]]", "{\"a\": 1}", "=", "a=b", "==", "all", "none", "0-7", "7-0", "0-3", "0-99999", "0,1,2",
         "0,0", "1-", "-1-3", "1-2-3", "0,1,-1", "-5", "4", "100000", "2147483648", "-0", "…"]
PATHS = [str(COMMITTED_SET), str(WORLD3), str(ROOT / "datasets" / "conceptworld"),
         str(ROOT / "datasets" / "conceptworld" / "concepts.yaml"), str(ROOT / "datasets" / "sd" / "imagenette.yaml"),
         str(ROOT / "datasets" / "sd" / "characters.yaml"), str(WORLD3 / "judge"), str(WORLD3 / "model"),
         "imagenette", "styles", "characters", "render", "generate", "clip", "imagenet", "imagenet-restricted",
         "resnet50", "/nonexistent/path", "/", ".", "..", "/dev/null", str(ROOT)]
PATHS += sorted(str(p) for p in FUZZ_DIR.glob("*.yaml"))  # every regression concept set, as --concept-set
ATTACKS = ["paraphrase", "inversion", "soft_prefix", "none", "nope"]


def _lists(pool: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=4).map(",".join)


HUGE = [10**309, -(10**400), 2**63, 2**64, -(2**63) - 1, 10**4000, 1e308, 5e-324]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**30), 10**30) | st.sampled_from(HUGE)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def _dumps(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity written as JSON5-style literals, as a user might


override_values = st.one_of(
    st.sampled_from(WEIRD),
    st.sampled_from(WEIRD),
    st.sampled_from(HUGE).map(str),
    st.sampled_from(HUGE).map(lambda v: f"[{v}]"),
    st.text(max_size=30),
    json_values.map(_dumps),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["fp32", "float32", "float64", "text", "unet", "xattn", "full", "adam", "adamw", "sgd",
                     "noxattn", "selfattn", "x", "u", "a", "mse", "noise", "model", "[\"a\"]", "[1, 2]", "[]"]),
    st.integers(1, 40).map(lambda n: "[" * n + "]" * n),
    st.integers(1000, 5000).map(lambda n: "[" * n),  # deep JSON
)


@st.composite
def set_pair(draw, spec: str | None = None, prefixed: bool = False) -> str:
    """``KEY=VALUE`` (``METHOD.KEY=VALUE`` when ``prefixed``), the key usually a real field of ``spec``."""
    spec = spec or draw(st.sampled_from(SPECS))
    key = draw(st.one_of(*[st.sampled_from(FIELDS[spec])] * 6,
                         st.sampled_from(FIELDS[spec]).map(lambda f: f[:-1] + " "), st.text(max_size=10),
                         st.sampled_from(["", " ", "lr.x", "=", "\n"])))
    if prefixed:
        key = draw(st.sampled_from([spec, spec.partition("@")[0], "nope", ""])) + "." + key
    value = draw(override_values)
    sep = draw(st.sampled_from(["=", "=", "=", "", "==", " = "]))
    return f"{key}{sep}{value}"


@st.composite
def grid_pair(draw, spec: str | None = None) -> str:
    """``KEY=V1,V2,...``, mostly real fields with two or three values."""
    spec = spec or draw(st.sampled_from(SPECS))
    key = draw(st.one_of(*[st.sampled_from(FIELDS[spec])] * 4, st.text(max_size=8)))
    values = draw(st.lists(override_values.filter(lambda v: "," not in v) | st.sampled_from(["", " "]),
                           min_size=1, max_size=3))
    sep = draw(st.sampled_from(["=", "=", "=", "", ":"]))
    return f"{key}{sep}" + ",".join(values)


# -- 1. the CLI parser of every subcommand -------------------------------------------------------------

PARSER = build_parser()
SUBPARSERS: dict[str, argparse.ArgumentParser] = next(
    a.choices for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))
COMMANDS = ["methods", "erase", "run", "plan", "tune", "sweep", "report", "verify", "migrate", "regress", "smoke",
            "attacks"]
assert sorted(COMMANDS) == sorted(SUBPARSERS), "a subcommand was added: list it in COMMANDS"


def _leaves(subs: dict[str, argparse.ArgumentParser]) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, a nested one's leaves named by both words ("attacks export")."""
    out = {}
    for name, sub in subs.items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        out.update({f"{name} {leaf}": p for leaf, p in nested[0].choices.items()} if nested else {name: sub})
    return out


LEAVES = _leaves(SUBPARSERS)
OPTIONS: dict[str, list[tuple[str, int | str | None, list | None]]] = {
    name: [(opt, action.nargs, list(action.choices) if action.choices else None)
           for action in sub._actions for opt in action.option_strings]
    for name, sub in LEAVES.items()}
# option -> the domain values it sees in real use (beside WEIRD values and random text)
DOMAIN: dict[str, st.SearchStrategy[str]] = {
    "--methods": st.one_of(_lists(SPECS + ["all", "esd", "fuchi@paper_era", "fuchi@nope", "nope"]),
                           st.sampled_from(["all", "fuchi", "uce", "esd@x"])),
    "--method": st.sampled_from(SPECS + ["esd", "fuchi@paper_era", "nope", "fuchi@", "@x"]),
    "--concepts": _lists(CONCEPT_NAMES + ["nope", "Circle"]),
    "--concept": st.sampled_from(CONCEPT_NAMES + ["", "golf ball"]),
    "--seeds": st.sampled_from(["0-3", "0-7", "0,1", "3-1", "0-20000", "0,0", "5", "0-0", "1,2,3,4,5"]),
    "--attack-seeds": st.sampled_from(["0", "1", "4", "8", "-1", "100"]),
    "--steps": st.sampled_from(["1", "25", "0", "-1", "1000", "1001", "99999999999999999999"]),
    "--guidance": st.sampled_from(["0", "5", "7.5", "-1", "nan", "inf", "1e308", "100.1"]),
    # the specs a default run, sweep or tune names come first: an override reaches a method's config only then
    "--set": st.sampled_from(SPECS + ["fuchi", "lora_eraser", "full_finetune"] * 2).flatmap(
        lambda s: set_pair(s, prefixed=True)),
    "--grid": grid_pair(),
    "--range": st.tuples(st.sampled_from(SPECS + ["nope"]), st.sampled_from(["1e-4", "0", "-1", "nan", "x", ""]),
                         st.sampled_from(["1e-2", "0", "inf", "1e-5", ""]), st.sampled_from([":", "", "::"])
                         ).map(lambda t: f"{t[0]}={t[1]}{t[3]}{t[2]}"),
    "--knob": st.sampled_from(["lr", "epochs", "erase_scale", "iterations", "nope", ""]),
    "--points": st.sampled_from(["2", "5", "1", "0", "-3", "100000"]),
    "--ratio": st.sampled_from(["2", "1.5", "1", "0", "nan", "-2", "2.0001"]),
    "--attacks": st.one_of(_lists(ATTACKS), st.sampled_from(["none", "all"])),
    "--second-judge": st.sampled_from(["none", str(WORLD3 / "clip"), "imagenet"]),
}
for _opt in ("--world", "--model", "--concept-set", "--judge", "--images", "--judge-weights", "--clip-model",
             "--clip-checkpoint", "--runs", "--sweeps", "--out", "--report"):
    DOMAIN[_opt] = st.sampled_from(PATHS)
JUNK = st.one_of(st.text(max_size=12), st.sampled_from(WEIRD),
                 st.sampled_from(["--", "-", "--se", "--me", "--c", "--no-verify", "-x", "--x=1",
                                  "--seeds=0-3", "--set=fuchi.lr=1", "--dry", "run", "methods", "-\n", "--a\nb"]))


@st.composite
def cli_argv(draw) -> list[str]:
    """A subcommand, then a mix of its real options with domain, odd or random values, and junk tokens
    (half the time, for the planned subcommands, only real options with their real-use values)."""
    command = draw(st.sampled_from(sorted(LEAVES) + ["run", "run", "run", "tune", "tune", "sweep", "sweep"]))
    argv = command.split()
    options = [o for o in OPTIONS[command] if o[0] not in ("-h", "--help")]
    clean = command in ("run", "plan", "tune", "sweep") and draw(st.booleans())
    if command == "tune" and draw(st.integers(0, 3)):
        argv += ["--method", draw(DOMAIN["--method"])]
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.integers(0, 59))
        if kind < 3 and not clean:
            argv.append(draw(JUNK))
            continue
        if kind == 3 and not clean:
            argv.append(draw(st.sampled_from(["-h", "--help"])))  # valid (exits 0), says nothing of parsing
            continue
        opt, nargs, choices = draw(st.sampled_from(options))
        argv.append(opt)
        if nargs == 0:
            continue
        pools = [] if clean and (choices or opt in DOMAIN) else [st.sampled_from(WEIRD), st.text(max_size=20)]
        if choices:
            pools += [st.sampled_from(choices)] * 4
        if opt in DOMAIN:
            pools += [DOMAIN[opt]] * 4
        value = draw(st.one_of(pools))
        if draw(st.integers(0, 9)) == 0:
            argv[-1] = f"{opt}={value}"
        else:
            argv.append(value)
    return argv


def _plan(args: argparse.Namespace) -> None:
    """What ``run --dry-run`` does, and the pure parsing part of ``tune`` and ``sweep``: no model, no writes."""
    from bench.run.plan import plan_bench

    if args.command == "plan":  # pure: the committed costs and the grid (--calibrate reads run folders: not here)
        args.calibrate = None
        with contextlib.redirect_stdout(io.StringIO()):
            assert args.func(args) == 0
        return
    if args.command == "run":
        args.dry_run = True  # forced: the only subcommand function the fuzzer calls, and only dry
        assert args.func.__name__ == "_cmd_run"
        with contextlib.redirect_stdout(io.StringIO()):
            assert args.func(args) == 0
        return
    if args.command == "tune":
        from bench.run.tune import TuneSpec

        args.methods = args.method  # as _cmd_tune does
        bench = bench_from_args(args)
        TuneSpec(grid=parse_grid(args.grid) if args.grid else None, knob=args.knob, ratio=args.ratio,
                 fixed=bench.method_overrides.get(args.method, {}))
    else:
        from bench.run.sweep import parse_ranges, sweep_plan

        bench = bench_from_args(args)
        sweep_plan(bench, args.points, args.knob, parse_ranges(args.range))  # every point validated
    grid = plan_bench(bench)
    assert isinstance(grid, list) and all(cell["method"] in bench.methods for cell in grid)


def check_cli(argv: list[str]) -> None:
    def parse():
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return build_parser().parse_args(argv)
        except SystemExit as e:  # -h/--help: argparse prints help and exits 0, a valid outcome
            assert e.code == 0, f"the parser exited {e.code!r} instead of raising ConfigError"
            _event("cli: help")
            return None

    args = holds("cli", parse)
    if args is None:
        return
    assert args.command == argv[0] or args.command in COMMANDS
    if args.command in ("run", "plan", "tune", "sweep"):
        holds("cli-plan", _plan, args)


@_settings("cli")
@given(argv=cli_argv())
# found here, fixed in bench/cli/main.py: argparse's "unrecognized arguments: %s" joined the raw tokens
# into the message (tests/fuzz/cli_unrecognized_argument_with_newline.json)
@example(argv=["methods", "\n"])
# found here, fixed in bench/api/config.py: an integer too large for a float field (OverflowError)
@example(argv=["run", "--methods", "fuchi", "--set", "fuchi.lr=1" + "0" * 400])
# fails until bench/run/plan.py's world_track survives a name too long for the file system (OSError
# ENAMETOOLONG from Path.exists): tests/fuzz/cli_world_name_too_long.json
@example(argv=["tune", "--method", "fuchi", "--world", "9" * 300])
# fails until world_track (bench/run/plan.py) names the folder in one line ("{folder} is not a built
# ConceptWorld" writes a line break raw): tests/fuzz/cli_world_name_with_newline.json
@example(argv=["sweep", "--world", "a\nb"])
def test_cli_parser(argv):
    check_cli(argv)


# -- 2. --set KEY=VALUE and --grid KEY=V1,V2 into a method's config ------------------------------------

MAX_COMBOS = 12


def check_overrides(spec: str, pairs: list[str], grid: list[str]) -> None:
    overrides = holds("overrides", parse_overrides, pairs)
    if overrides is not None:
        method = holds("overrides-build", build_method, spec, overrides)
        if method is not None:
            assert type(method.config).from_dict(method.config.to_dict()) == method.config
    parsed = holds("grid", parse_grid, grid)
    if parsed:
        keys = list(parsed)
        for combo in itertools.islice(itertools.product(*parsed.values()), MAX_COMBOS):
            holds("grid-build", build_method, spec, dict(zip(keys, combo, strict=True)))


@st.composite
def override_case(draw) -> tuple[str, list[str], list[str]]:
    spec = draw(st.sampled_from(SPECS + ["esd", "fuchi@paper_era"]))
    field_spec = spec if spec in FIELDS else {"esd": "esd@x", "fuchi@paper_era": "fuchi"}[spec]
    pairs = draw(st.lists(set_pair(field_spec), min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=4))
    grid = draw(st.lists(grid_pair(field_spec), max_size=3))
    return spec, pairs, grid


@_settings("overrides")
@given(case=override_case())
# found here, fixed in bench/api/config.py (tests/fuzz/overrides_*.json): an integer too large for a
# float raised OverflowError in _check_type; a key's line break went raw into the error message
@example(case=("fuchi", ["lr=1" + "0" * 400], []))
@example(case=("fuchi", ["a\nb="], []))
@example(case=("fuchi", [], ["a\nb=,"]))
def test_set_and_grid_overrides(case):
    check_overrides(*case)


# -- 3. the concept-set YAML loader ------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["{}", "a {}", "{} {}", "{0}", "{x} {}", "{}{", "}{}", "{} {.x}", "{} {[a]}", "object",
                              "style", "test", "dev", "colour", "circle", "ring", ""]))
structures = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.sampled_from(CONCEPT_KEYS) | st.text(max_size=6)
                                            | st.integers(), inner, max_size=4), max_leaves=16)


@st.composite
def concept_entry(draw) -> dict[str, Any]:
    entry: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):
        entry["name"] = draw(st.sampled_from(CONCEPT_NAMES) | scalars)
    for key in draw(st.lists(st.sampled_from(CONCEPT_KEYS) | st.text(max_size=5), max_size=5)):
        entry[key] = draw(structures | st.lists(st.sampled_from(CONCEPT_NAMES) | scalars, max_size=4))
    return entry


@st.composite
def mutated_committed(draw) -> Any:
    """The committed concept set (or a subset of its concepts) with a few keys dropped or replaced."""
    data = copy.deepcopy(COMMITTED)
    if draw(st.booleans()):
        keep = draw(st.lists(st.integers(0, len(data["concepts"]) - 1), min_size=1, max_size=6, unique=True))
        data["concepts"] = [data["concepts"][i] for i in sorted(keep)]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 6))
        if op == 0 and data:
            data.pop(draw(st.sampled_from(sorted(data, key=str))))
        elif op == 1:
            data[draw(st.sampled_from(["name", "version", "concepts", "extra", "nme"]))] = draw(structures)
        elif isinstance(data.get("concepts"), list) and data["concepts"]:
            i = draw(st.integers(0, len(data["concepts"]) - 1))
            entry = data["concepts"][i]
            if op == 2 and isinstance(entry, dict) and entry:
                entry.pop(draw(st.sampled_from(sorted(entry, key=str))))
            elif op == 3 and isinstance(entry, dict):
                entry[draw(st.sampled_from(CONCEPT_KEYS) | st.text(max_size=6))] = draw(structures)
            elif op == 4:
                data["concepts"][i] = draw(concept_entry() | structures)
            elif op == 5:
                data["concepts"].append(copy.deepcopy(entry))
            elif isinstance(entry, dict) and isinstance(entry.get("templates"), list):
                entry["templates"].append(draw(scalars))
    return data


def _laughs(levels: int, width: int, where: str) -> str:
    """The "billion laughs": each alias level repeats the one below ``width`` times."""
    lines = ["a0: &a0 [lol]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    top = f"*a{levels}"
    body = {"name": f"name: {top}\nversion: 1\nconcepts: [{{name: x}}]",
            "concepts": f"name: x\nversion: 1\nconcepts: {top}",
            "templates": f"name: x\nversion: 1\nconcepts:\n- name: x\n  templates: {top}",
            "extra": f"name: x\nversion: 1\nconcepts:\n- name: x\n  extra: {{a: {top}}}",
            "key": f"name: x\nversion: 1\nconcepts:\n- name: x\n  {top}: 1"}[where]
    return "\n".join(lines) + "\n" + body + "\n"


HOSTILE_VALUES = [
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!python/object/new:dict {}",
    "!!python/object:argparse.Namespace {a: 1}", "!!binary aGVsbG8=", "!!binary '!!!'", "!!set {a, b}",
    "!!omap [a: 1]", "!!pairs [a: 1]", "!!timestamp 2001-13-45", "2001-12-14", "2001-02-30", "!!float x",
    "!!int 0x", "!!bool maybe", "!foo bar", "!<tag:x> y", "!!str", "!!null", "~", "*undefined", "&a x",
    "<<: {name: y}", "!!merge x", "9" * 5000, "0x" + "f" * 5000, "0o7777777777777777777777777", "1_0_0",
    "'" + "x" * 200_000 + "'", "\"\\ud800\"", "\"\\x00\"", "\"\\U0010ffff\"", "|\n  a\n  b", "? [a]\n: 1",
    "[{name: x}]", "{}", "[]", "\"{}\"", "'{0}'", "'{} {x}'", "'{}{'", ".nan", ".inf", "-.inf",
]


def _alias_chain(n: int) -> bytes:
    """Each alias one level deeper than the last: shallow as written, ``n`` levels deep once expanded."""
    return ("x0: &x0 [a]\n" + "".join(f"x{i}: &x{i} [*x{i - 1}]\n" for i in range(1, n + 1))
            + f"name: x\nversion: 1\nconcepts:\n- name: a\n  synonyms: *x{n}\n").encode()


def _many_concepts(n: int, split: str) -> bytes:
    return b"name: x\nversion: 1\nconcepts:\n" + "".join(f"- {{name: c{i}, split: {split}}}\n"
                                                          for i in range(n)).encode()


@st.composite
def hostile_text(draw) -> bytes:
    """YAML built to hurt: deep nesting, alias expansion, refused tags, huge or odd scalars, bad encodings."""
    kind = draw(st.integers(0, 11))
    if kind == 10:
        return _alias_chain(draw(st.sampled_from([10, 49, 50, 51, 200, 1200])))
    if kind == 11:
        return _many_concepts(draw(st.sampled_from([1, 999, 1000, 1001, 3000])), draw(st.sampled_from(SPLITS)))
    if kind == 0:
        n = draw(st.sampled_from([10, 60, 600, 2000, 10_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("- ", "")]))
        closed = draw(st.booleans())
        if opener == "- ":
            return "".join("  " * i + "-\n" for i in range(min(n, 2000))).encode() + b"  " * n + b"- x\n"
        return (opener * n + ("x" + closer * n if closed else "")).encode()
    if kind == 1:
        return _laughs(draw(st.integers(1, 14)), draw(st.integers(2, 12)),
                       draw(st.sampled_from(["name", "concepts", "templates", "extra", "key"]))).encode()
    if kind == 2:
        return draw(st.sampled_from([
            b"a: &a [*a]\nname: *a\nversion: 1\nconcepts: [{name: x}]\n",
            b"name: x\nversion: 1\nconcepts: &c [{name: x, extra: {c: *c}}]\n",
            b"name: x\nversion: 1\nconcepts: &c [{name: x, synonyms: *c}]\n",
            b"name: &n [*n]\nversion: 1\nconcepts: [{name: x}]\n",
            b"name: x\nversion: 1\nconcepts:\n- &a {name: a}\n- <<: *a\n",
            b"name: x\nversion: 1\nconcepts:\n- &a {name: a, <<: *a}\n",
            b"name: x\nversion: 1\nconcepts: [{name: x, templates: &t ['{}'], synonyms: *t}]\n",
            b"%YAML 1.1\n%TAG ! tag:yaml.org,2002:python/\n---\nname: !object/apply:os.system [true]\n",
            b"a: 1\n---\nb: 2\n", b"", b"---\n", b"...\n", b"# only a comment\n", b"\xef\xbb\xbf",
        ]))
    if kind == 3:
        return draw(st.binary(max_size=600))
    if kind == 4:  # invalid UTF-8, BOMs and other encodings of a valid set
        good = "name: x\nversion: 1\nconcepts:\n- name: caf\u00e9\n"
        enc = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
        data = bytearray(good.encode(enc, errors="replace"))
        if draw(st.booleans()) and data:
            data.insert(draw(st.integers(0, len(data))), draw(st.sampled_from([0xFF, 0xC3, 0x80, 0xED, 0x00])))
        return bytes(data)
    value = draw(st.sampled_from(HOSTILE_VALUES))
    field = draw(st.sampled_from(["name", "type", "templates", "synonyms", "split", "anchor", "extra", "composed",
                                  "near_neighbours", "preserve", "1.5", "[1]", "x"]))
    where = draw(st.sampled_from(["top", "concept", "list"]))
    if where == "top":
        return f"name: {value if field == 'name' else 'x'}\nversion: 1\nconcepts: [{{name: a}}]\n{field}: {value}\n".encode()
    if where == "list":
        return f"name: x\nversion: 1\nconcepts:\n- name: a\n  {field}:\n  - {value}\n".encode()
    return f"name: x\nversion: 1\nconcepts:\n- name: a\n  split: dev\n- name: b\n  {field}: {value}\n".encode()


def _dump(data: Any, unicode: bool) -> bytes:
    return yaml.safe_dump(data, allow_unicode=unicode, sort_keys=False).encode()


@st.composite
def byte_mutated(draw) -> bytes:
    """The committed file's text with bytes flipped, inserted, deleted, or cut short."""
    raw = bytearray(COMMITTED_SET.read_bytes()[: draw(st.sampled_from([2000, 6000, 30_000]))])
    for _ in range(draw(st.integers(1, 6))):
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            raw[i] = draw(st.integers(0, 255))
        elif op == 1:
            raw[i:i] = draw(st.sampled_from([b"&a ", b"*a", b"!!python/none ", b"{", b"[", b"\n- ", b": ",
                                             b"\t", b"'", b'"', b"\\", b"%", b"\xff", b"<<: "]))
        elif op == 2:
            del raw[i:i + draw(st.integers(1, 50))]
        else:
            del raw[i:]
    return bytes(raw)


concept_files = st.one_of(
    st.builds(_dump, structures, st.booleans()),
    st.builds(_dump, st.fixed_dictionaries({"name": scalars, "version": scalars,
                                            "concepts": st.lists(concept_entry(), max_size=4) | structures}),
              st.booleans()),
    st.builds(_dump, mutated_committed(), st.booleans()),
    hostile_text(),
    byte_mutated(),
)


def check_concept_set(raw: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-yaml-") as tmp:
        path = Path(tmp) / "concepts.yaml"
        path.write_bytes(raw)
        cs = holds("concepts", load_concept_set, path)
    if cs is not None:  # a valid set: what the harness reads of it works
        assert isinstance(cs, ConceptSet) and cs.concepts and "\n" not in cs.id
        for c in cs.concepts:
            assert isinstance(c.name, str) and c.name.strip()
            assert all(isinstance(p, str) for p in c.prompts() + c.anchor_prompts() + list(c.preserve))
            assert cs.get(c.name) is c


@_settings("concepts")
@given(raw=concept_files)
@example(raw=_alias_chain(1200))  # was a RecursionError (repr of the expanded value); too large for tests/fuzz
@example(raw=_many_concepts(3000, "dev"))  # was a hang (quadratic per-concept defaults); ditto
def test_concept_set_loader(raw):
    check_concept_set(raw)


# -- 4. the image-folder reader ----------------------------------------------------------------------

SUFFIXES = sorted(IMAGE_SUFFIXES) + [".PNG", ".JPG", ".Jpeg"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _progressive_jpeg(width: int, height: int, scans: int) -> bytes:
    """A small progressive JPEG declaring ``width`` x ``height``, its first scan header repeated ``scans``
    times (each scan empty): libjpeg decodes every scan over the whole declared image."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG", progressive=True)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc2")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    sos = data.index(b"\xff\xda")
    header = bytes(data[sos:sos + 2 + struct.unpack(">H", data[sos + 2:sos + 4])[0]])
    return bytes(data[:sos]) + (header + b"\x00") * scans + b"\xff\xd9"


@st.composite
def crafted_header(draw) -> bytes:
    """A real format's header with drawn (often huge or zero) dimensions, then random bytes."""
    w, h = (draw(st.sampled_from([0, 1, 2, 7, 64, 12_000, 65_535, 2**31 - 1, 2**32 - 1])) for _ in range(2))
    kind = draw(st.integers(0, 7))
    if kind == 7:  # at 100 megapixels only scan counts that are refused (an accepted decode takes a second)
        size = draw(st.sampled_from([(16, 16), (640, 480), (10_000, 9_999)]))
        scans = [101, 3000] if size[0] > 1000 else [1, 10, 100, 3000]
        return _progressive_jpeg(*size, draw(st.sampled_from(scans)))
    tail = draw(st.binary(max_size=300))
    if kind == 0:  # PNG: signature, an IHDR (CRC right), maybe an IDAT, random chunks
        ihdr = struct.pack(">IIBBBBB", w, h, draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0])),
                           draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7])), 0, 0, draw(st.sampled_from([0, 1])))
        body = _png_chunk(b"IHDR", ihdr)
        for _ in range(draw(st.integers(0, 3))):
            ctype = draw(st.sampled_from([b"IDAT", b"PLTE", b"tRNS", b"acTL", b"fcTL", b"fdAT", b"iCCP", b"eXIf",
                                          b"zTXt", b"tEXt", b"iTXt", b"IEND", b"xxXX"]))
            data = draw(st.binary(max_size=64))
            if ctype == b"IDAT" and draw(st.booleans()):
                data = zlib.compress(data * 8)
            body += _png_chunk(ctype, data)
        return b"\x89PNG\r\n\x1a\n" + body + tail
    if kind == 1:  # JPEG: SOI, maybe a frame header with the drawn size, random segments
        sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h & 0xFFFF, w & 0xFFFF, 1) + b"\x01\x11\x00"
        return b"\xff\xd8" + draw(st.sampled_from([b"", b"\xff\xe0\x00\x10JFIF\x00", b"\xff\xe1\x00\x08Exif"]))\
            + (sof if draw(st.booleans()) else b"") + tail
    if kind == 2:  # WebP: RIFF size WEBP + a VP8/VP8L/VP8X chunk
        chunk = draw(st.sampled_from([b"VP8 ", b"VP8L", b"VP8X", b"ANIM", b"ANMF", b"ALPH"]))
        payload = struct.pack("<I", draw(st.sampled_from([0, 10, 2**31]))) + tail
        return b"RIFF" + struct.pack("<I", draw(st.sampled_from([4 + len(payload), 0, 2**32 - 1]))) + b"WEBP" \
            + chunk + payload
    if kind == 3:  # BMP with a declared size, bit depth and compression
        bpp = draw(st.sampled_from([1, 4, 8, 16, 24, 32, 0, 64]))
        comp = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 99]))
        size = draw(st.sampled_from([54, 0, 2**32 - 1]))
        hdr = b"BM" + struct.pack("<IHHI", size, 0, 0, 54)
        info = struct.pack("<IiiHHIIiiII", 40, w & 0x7FFFFFFF, draw(st.sampled_from([h & 0x7FFFFFFF, -h & 0x7FFFFFFF,
                                                                                 -1])),
                           1, bpp, comp, 0, 2835, 2835, draw(st.sampled_from([0, 256, 2**32 - 1])), 0)
        return hdr + info + tail
    if kind == 4:  # GIF with a logical screen size
        return b"GIF89a" + struct.pack("<HHBBB", w & 0xFFFF, h & 0xFFFF, 0xF7, 0, 0) + tail
    if kind == 5:  # other formats PIL sniffs regardless of the suffix
        return draw(st.sampled_from([b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00", b"8BPS", b"%!PS-Adobe-3.0 EPSF-3.0\n",
                                     b"P6\n", b"P5\n65535 65535\n255\n", b"\x00\x00\x00\x0cjP  ", b"DDS ", b"qoif",
                                     b"icns", b"FORM", b"\x0a\x05\x01\x08", b"SIMPLE  =                    T"])) + tail
    return draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"BM",
                                 b"GIF87a"])) + tail


@st.composite
def real_image(draw) -> bytes:
    """A small image PIL saves (odd modes, EXIF orientation, animation), maybe flipped or cut short."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]))
    modes = {"PNG": ["RGB", "L", "RGBA", "P", "I;16", "1", "LA"], "JPEG": ["RGB", "L", "CMYK"],
             "WEBP": ["RGB", "RGBA"], "BMP": ["RGB", "L", "P", "1"], "GIF": ["P", "L"],
             "TIFF": ["RGB", "F", "I;16", "CMYK", "I"]}[fmt]
    mode = draw(st.sampled_from(modes))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    pixels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(pixels, "RGB")
    im = im.convert(mode) if mode not in ("I;16", "I", "F") else im.convert("L").convert(mode)
    buf = io.BytesIO()
    kw: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP", "PNG", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))
        kw["exif"] = exif
    if fmt in ("WEBP", "GIF", "PNG", "TIFF") and draw(st.integers(0, 3)) == 0:
        kw.update(save_all=True, append_images=[im.rotate(90), im.rotate(180)])
    im.save(buf, fmt, **kw)
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 2))
        i = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            del data[i:]
            if not data:
                break
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


image_bytes = st.one_of(st.binary(max_size=2048), crafted_header(), real_image(), real_image())
image_folders = st.lists(st.tuples(st.sampled_from(SUFFIXES), image_bytes), min_size=1, max_size=3)


def _valid_image(image: Image.Image) -> None:
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.size[0] >= 1 and image.size[1] >= 1


def check_images(files: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-img-") as tmp:
        folder = Path(tmp)
        paths = []
        for i, (suffix, data) in enumerate(files):
            paths.append(folder / f"img{i}{suffix}")
            paths[-1].write_bytes(data)
        notes: list[str] = []
        images = holds("images", load_images, folder, notes)
        if images is not None:
            assert len(images) == len(files)
            for image in images:
                _valid_image(image)
            assert all(isinstance(n, str) and "\n" not in n for n in notes)
        for path in paths:
            got = holds("read_image", read_image, path)
            if got is not None:
                _valid_image(got[0])
                assert all(isinstance(n, str) and "\n" not in n for n in got[1])


@_settings("images")
@given(files=image_folders)
@example(files=[(".jpg", _progressive_jpeg(10_000, 9_999, 3000))])  # was over a minute to decode; 45 KB
def test_image_folder_reader(files):
    check_images(files)


# -- regression inputs: every file in tests/fuzz through its entry point --------------------------------

def _replay(path: Path) -> None:
    if path.suffix == ".yaml":
        check_concept_set(path.read_bytes())
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        check_images([(path.suffix, path.read_bytes())])
    elif path.suffix == ".json":
        case = json.loads(path.read_text())
        if case["entry"] == "cli":
            check_cli(case["argv"])
        elif case["entry"] == "overrides":
            check_overrides(case["spec"], case.get("set", []), case.get("grid", []))
        else:
            raise AssertionError(f"{path.name}: unknown entry {case['entry']!r}")
    else:
        raise AssertionError(f"{path.name}: no entry point reads {path.suffix!r} files")


@pytest.mark.parametrize("path", sorted(p for p in FUZZ_DIR.iterdir() if p.name != "README.md")
                         if FUZZ_DIR.is_dir() else [], ids=lambda p: p.name)
def test_replay(path):
    _replay(path)


def test_image_content_outside_the_reader_formats_is_refused(tmp_path):
    """PIL sniffs content whatever the suffix: a .png holding PostScript would be rendered by Ghostscript
    where it is installed. The reader decodes PNG, JPEG, WebP, BMP and GIF only."""
    (tmp_path / "page.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(BenchError, match=r"page.png: not a PNG, JPEG, WebP, BMP or GIF file"):
        read_image(tmp_path / "page.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "renamed.jpg", "PNG")  # a wrong suffix among those formats: read
    assert read_image(tmp_path / "renamed.jpg")[0].size == (4, 4)


@pytest.mark.parametrize("name", ["9" * 300, "two\nlines"])
def test_unusable_paths_are_one_line_errors(tmp_path, name):
    """A name too long for the file system (OSError from pathlib), or one with a line break, as a path."""
    for read in (load_concept_set, load_images, read_image):
        with pytest.raises(BenchError) as e:
            read(tmp_path / name)
        assert "\n" not in str(e.value)


def test_a_key_written_twice_is_refused_not_silently_overwritten():
    """YAML readers keep the last of two equal keys; the concept-set loader refuses the file instead."""
    with pytest.raises(BenchError, match="the key 'type' is written twice in the mapping at line 4; keep one"):
        load_concept_set(FUZZ_DIR / "concepts_key_written_twice.yaml")


def test_a_sweep_or_ladder_past_its_point_budget_is_refused_not_computed():
    """``--points 1e9`` (found by make fuzz: it hung building the sweep) and a ladder ratio near 1."""
    from bench.api.method import MAX_POINTS, get_method

    knob = get_method("fuchi").knob()
    with pytest.raises(BenchError, match=f"a sweep of 1,000,000,000 points; at most {MAX_POINTS}"):
        knob.sweep(10**9)
    with pytest.raises(BenchError, match="use a larger ratio"):
        knob.ladder(1.0000001)
    assert len(knob.sweep(MAX_POINTS)) <= MAX_POINTS and len(knob.ladder(2.0)) >= 2
