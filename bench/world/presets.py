"""The built worlds a checkout knows: each preset's folders, and the one ``make bench`` measures on."""

from __future__ import annotations

from bench.core.paths import ROOT

# where each preset's build writes (out, work) unless told otherwise
PRESET_FOLDERS: dict[str, tuple[str, str]] = {"2.1": ("datasets/conceptworld", "work/conceptworld"),
                                              "3": ("datasets/conceptworld3", "work/conceptworld3")}

# the world `make bench` measures on and `make world` builds: world 3 since build b11 met every gate;
# world 2.1 stays in its folder (`--world datasets/conceptworld`, `make world WORLD=2.1`)
DEFAULT_PRESET = "3"
DEFAULT_WORLD = ROOT / PRESET_FOLDERS[DEFAULT_PRESET][0]
# the second opinion a run on the default world records (its world CLIP; world 2.1's is its ViT judge,
# which world_track finds in its folder): the default of Track.second_judge and of --second-judge's help
DEFAULT_SECOND_JUDGE = DEFAULT_WORLD / "clip"
