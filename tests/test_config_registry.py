import json
import sys
from dataclasses import FrozenInstanceError, dataclass

import pytest

from bench.api.config import MethodConfig, parse_overrides
from bench.api.method import ENTRY_POINT_GROUP, Eraser, build_method, get_method, method_registry
from bench.api.registry import Registry
from bench.core.errors import ConfigError


@dataclass(frozen=True)
class _Cfg(MethodConfig):
    lr: float = 1e-3
    steps: int = 3
    names: tuple[str, ...] = ("a",)

    def validate(self) -> None:
        self._require(self.steps >= 1, "steps must be >= 1")


def test_config_round_trip_and_errors():
    cfg = _Cfg.from_dict({"lr": 1, "names": ["x", "y"]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.names == ("x", "y")
    assert _Cfg.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json()) == {"lr": 1.0, "names": ["x", "y"], "steps": 3}
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 2.0
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        _Cfg.from_dict({"stepz": 2})
    with pytest.raises(ConfigError, match="steps must be an integer"):
        _Cfg.from_dict({"steps": "many"})
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        _Cfg(steps=0)
    assert parse_overrides(["lr=0.5", "placeholder=sks", "names=[\"a\"]"]) == {"lr": 0.5, "placeholder": "sks",
                                                                              "names": ["a"]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_registry_rejects_duplicates_suggests_and_loads_lazily():
    reg: Registry[object] = Registry("thing")
    reg.register("alpha", "json:dumps")
    with pytest.raises(ConfigError, match="duplicate thing name 'alpha'"):
        reg.register("alpha", "json:loads")
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        reg.get("alpah")
    assert reg.get("alpha") is json.dumps
    with pytest.raises(ConfigError, match="could not be loaded"):
        reg.register("broken", "no_such_module_xyz:thing")
        reg.get("broken")


def test_builtin_methods_are_registered():
    names = method_registry().names()
    assert {"fuchi", "lora_eraser", "full_finetune"} <= set(names)
    for name in names:
        assert get_method(name).name == name
    with pytest.raises(ConfigError, match="did you mean 'fuchi'"):
        get_method("fuchy")
    assert build_method("fuchi@paper_era").config.trainable == "paper_era"
    assert build_method("fuchi", {"lr": 2e-5}).config.lr == 2e-5
    with pytest.raises(ConfigError, match="no variant"):
        build_method("fuchi@nope")
    with pytest.raises(ConfigError, match="lr must be >= 0"):
        build_method("fuchi", {"lr": -1.0})


def test_leaderboard_specs_name_each_row_once():
    """A method whose defaults are one of its variants is reported by its variants; `--methods all`."""
    from bench.api.method import leaderboard_specs
    from bench.cli.main import bench_from_args, build_parser

    specs = leaderboard_specs()
    assert {"esd@x", "esd@u", "fuchi", "uce", "concept_ablation", "advunlearn"} <= set(specs)
    assert "esd" not in specs and "fuchi@paper_era" not in specs
    args = build_parser().parse_args(["run", "--methods", "all", "--dry-run"])
    assert bench_from_args(args).methods == specs


_PLUGIN = '''
from dataclasses import dataclass
from bench.api.config import MethodConfig
from bench.api.method import Eraser

@dataclass(frozen=True)
class NullConfig(MethodConfig):
    pass

class NullEraser(Eraser):
    name = "null_plugin"
    Config = NullConfig
    def edited_parameters(self, pipe):
        return []
    def erase(self, pipe, concept, images, seed):
        raise NotImplementedError
'''


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    """An installed package adds a method through the entry-point group, without touching bench/."""
    (tmp_path / "null_plugin_pkg.py").write_text(_PLUGIN)
    dist = tmp_path / "null_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: null-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nnull_plugin = null_plugin_pkg:NullEraser\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        reg = method_registry(refresh=True)
        assert "null_plugin" in reg
        assert issubclass(get_method("null_plugin"), Eraser)
    finally:
        sys.modules.pop("null_plugin_pkg", None)
        monkeypatch.undo()
        method_registry(refresh=True)
    assert "null_plugin" not in method_registry()
