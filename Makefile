# Two commands on a fresh machine: `make test` and `make bench` create .venv and install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
comma  := ,
STAMP  := $(VENV)/.installed

.PHONY: setup test test-slow layers lint bench leaderboard fuzz smoke world world-judge world-eval world-reference costs regress goldens perf report tune curves scaleout gpu-check

# pip compiles every installed module to bytecode on one core (half of a fresh install); compileall
# does it on every core afterwards (a fresh install on 2 cores: 146 s before, about 100 s so)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-compile -e '.[dev,ray]'
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null \
		|| echo "compileall: a few files were not byte-compiled (torch's py312_intrinsics.py is Python 3.12 only; pip skips such files too)"
	@touch $(STAMP)

setup: $(STAMP)

# The fast tier on one worker per core (TEST_WORKERS; torch at one thread in each, tests/conftest.py), a file's
# tests together on one worker; the slowest 15 tests are listed at the end. The slow tier (tests that build
# worlds, train CLIPs, run full-size models or kill Ray actors) runs in one process: make test-slow.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

# The import layers alone (a second: tests/test_layers.py; docs/architecture.md)
layers: $(STAMP)
	$(PY) -m pytest -q -p no:xdist tests/test_layers.py

# The fuzz tests of make test (tests/test_fuzz.py: CLI, --set/--grid values, concept-set YAML, image folders)
# run long: FUZZ_EXAMPLES cases per entry point (20,000: about 20 minutes on 2 cores); the counts print at the end
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:xdist tests/test_fuzz.py --durations=5

lint: $(STAMP)
	$(PY) -m ruff check bench methods tests

# Overridable: make bench METHODS=fuchi CONCEPTS=circle,star SEEDS=0-3 MODEL=path/to/pipeline ATTACKS=none ATTACK_SEEDS=2 PROTOCOL=full
# EXECUTOR=ray (cells on Ray actors; README "Running on a cluster"; tune and curves take it too) OUT=runs/mine
# ARGS='--steps 5' (any other bench run flag).
# The default runs the founding methods on world 3's 16 test concepts, the quick protocol and the default
# attacks in about 7 minutes on 2 cores (48 cells on 2 Ray workers, the original model's references read from
# the world's pack; python -m bench plan estimates any grid). Its report goes to OUT/report (runs/bench/report), never to the
# committed reports/: it prints where, and how its numbers compare with the committed leaderboard's
# (make leaderboard is the one command that rewrites reports/). METHODS=all (python -m bench methods --specs)
# adds advunlearn too, whose published budget costs about an hour per concept on 2 cores (see the README).
METHODS  ?= fuchi,lora_eraser,full_finetune
# quick: the declared quick protocol (bench.core.protocol.PROTOCOLS: evaluation seeds 0-3 of the full 0-7);
# its report says it is not the leaderboard. PROTOCOL=full: the leaderboard's protocol (9:25 and 10:51 on 2 cores).
PROTOCOL ?= quick
CONCEPTS ?=
SEEDS    ?=
MODEL    ?=
# ATTACKS empty: the default attacks (bench.run.plan.DEFAULT_ATTACKS: the faithful ones on their declared
# CPU-world budgets, docs/robustness.md, and the paraphrases); ATTACKS=all: every attack (ALL_ATTACKS, what
# the leaderboard runs); ATTACKS=none: no robustness axis.
ATTACKS  ?=
ATTACK_SEEDS ?=
OUT      ?= runs/bench
ARGS     ?=
# EXECUTOR empty: Ray where it is installed (make setup installs it), one single-threaded worker per core,
# else this process (docs/cluster.md: 0.73x the wall time of one 2-thread process on 2 cores).
DEFAULT_EXECUTOR = $(or $(EXECUTOR),$(shell $(PY) -c 'import ray' 2>/dev/null && echo ray),local)
bench: $(STAMP)
	$(PY) -m bench run --methods $(METHODS) --protocol $(PROTOCOL) $(if $(CONCEPTS),--concepts $(CONCEPTS)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(MODEL),--model $(MODEL)) $(if $(ATTACKS),--attacks $(ATTACKS)) \
		$(if $(ATTACK_SEEDS),--attack-seeds $(ATTACK_SEEDS)) \
		--executor $(DEFAULT_EXECUTOR) --out $(OUT) --sweeps runs/sweep --compare reports $(ARGS)

# The committed leaderboard, on purpose: every leaderboard method on the full protocol (world 3's test
# concepts, 8 seeds, every attack), on Ray actors when Ray is installed, cells in runs/bench (make
# bench's cells are reused), with the trade-off curves of runs/sweep; then reports/ rewritten. The one command
# that writes reports/ (beside make tune's reports/tuned/ and make goldens' reports/goldens/). Without a
# runs/sweep (make curves METHODS=$(LEADERBOARD_METHODS): hours on 2 cores) it stops before any work, as the
# page would lose its curves; CURVES=none rebuilds the page without them.
LEADERBOARD_METHODS := fuchi,lora_eraser,full_finetune,esd@x,esd@u,uce,concept_ablation
CURVES ?= runs/sweep
leaderboard: $(STAMP)
	@if [ "$(CURVES)" != none ] && [ ! -f "$(CURVES)/sweep.json" ]; then \
		echo "error: no trade-off curves in $(CURVES) (make curves METHODS=$(LEADERBOARD_METHODS) first), or make leaderboard CURVES=none" >&2; \
		exit 2; fi
	$(PY) -m bench run --methods $(LEADERBOARD_METHODS) --attacks all \
		--executor $(DEFAULT_EXECUTOR) --out runs/bench $(if $(filter none,$(CURVES)),,--sweeps $(CURVES)) \
		--report reports

# Choose each method's strength on dev concepts (log steps of <= 2x; every point recorded in
# reports/tuned/). The dev concepts are the ones the committed choice was made on.
DEV_CONCEPTS ?= ring,diamond,checkered,quaddle,triangle,cross
tune: $(STAMP)
	for m in $(subst $(comma), ,$(if $(filter all,$(METHODS)),$(shell $(PY) -m bench methods --specs),$(METHODS))); do \
		$(PY) -m bench tune --method $$m --concepts $(DEV_CONCEPTS) --seeds 0-3 --out runs/tune --save-tuned \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) || exit 2; done

# The report of runs/bench rebuilt from its folders alone, into runs/bench/report (make leaderboard writes reports/)
report: $(STAMP)
	$(PY) -m bench report --runs runs/bench --out runs/bench/report --sweeps runs/sweep

# Trade-off curves: every method's strength knob swept on test concepts (8 seeds, attacks off), then
# the leaderboard rebuilt with them (when make bench has made its cells).
POINTS ?= 5
curves: $(STAMP)
	$(PY) -m bench sweep --methods $(METHODS) --points $(POINTS) $(if $(SEEDS),--seeds $(SEEDS)) --out runs/sweep \
		$(if $(EXECUTOR),--executor $(EXECUTOR))
	@if [ -d runs/bench/cells ]; then $(PY) -m bench report --runs runs/bench --out runs/bench/report --sweeps runs/sweep; \
	else echo "no runs/bench yet: make bench draws the curves into runs/bench/report/"; fi

regress: $(STAMP)
	$(PY) -m bench regress

goldens: $(STAMP)
	$(PY) -m bench regress --update

perf: $(STAMP)
	$(PY) -m pytest -q -m perf -p no:randomly tests/perf --benchmark-columns=min,mean,rounds -s

# Ray's overhead on this machine: the ConceptWorld grid (attacks off) with --executor local, then
# --executor ray --workers 2, side by side (runs/scaleout/scaleout.json)
scaleout: $(STAMP)
	$(PY) -m bench.devtools.scaleout --methods $(METHODS) --out runs/scaleout

# GPU timing (docs/testing.md): every method's erase, each attack's step and generation throughput (bf16, fp16; batch
# 8, 32) on SD v1.5- and v2.1-size random pipelines, budgeted at 8 minutes on one H100 (not yet run on a GPU), beside the papers' times, into
# GPU_OUT (gpu-check.json, gpu-check.md). Without CUDA it runs --tiny (tiny pipelines on the CPU, seconds) and says so.
# GPU_ARGS: any other flag (--archs sd15 --methods esd@x --budget-s 300 --tiny ...).
GPU_OUT  ?= runs/gpu-check
GPU_ARGS ?=
gpu-check: $(STAMP)
	$(PY) -m bench.devtools.gpucheck --out $(GPU_OUT) $(GPU_ARGS)

# Every method on a tiny *random* pipeline: the real code path end to end, a mechanics check.
smoke: $(STAMP)
	$(PY) -m bench smoke --out runs/smoke

# make world: ConceptWorld 3 (the default since build b11 met every gate: world 3's vocabulary, a world
# CLIP pretrained first and the UNet trained against its frozen text tower) into datasets/conceptworld3.
# make world WORLD=2.1: world 2.1 into datasets/conceptworld (its config unchanged but for judge 2.4's defaults). The folders come
# from bench.world.presets.PRESET_FOLDERS.
WORLD ?= 3
# WORLD=2 is 2.1; any other name reaches --preset, which refuses one that is not a preset
WORLD_PRESET = $(if $(filter 2,$(WORLD)),2.1,$(WORLD))
world: $(STAMP)
	$(PY) -m bench.world build --preset $(WORLD_PRESET)

# Retrain only the judges of a committed world (its VAE; the model is untouched; world 3's second judge
# is its world CLIP, which stays), then measure the gates again and write them into its README and MANIFEST.
world-judge: $(STAMP)
	$(PY) -m bench.world judge --preset $(WORLD_PRESET)
	$(PY) -m bench.world evaluate --preset $(WORLD_PRESET) --write

world-eval: $(STAMP)
	$(PY) -m bench.world evaluate --preset $(WORLD_PRESET)

# The original model's references (images, every attack's work and ASR on it) for the world's default run,
# computed once on Ray workers at one thread each and packed into WORLD/reference/references.safetensors,
# listed in its MANIFEST: make bench and make leaderboard read them instead of computing them (same numbers;
# --no-shipped-references computes them). Rewrites a committed world file, so it is named for it.
world-reference: $(STAMP)
	$(PY) -m bench.world reference --preset $(WORLD_PRESET) --attacks all --executor $(DEFAULT_EXECUTOR)

# The unit costs bench plan estimates with (bench/run/costs.json), measured from the cells and run logs of
# COST_RUNS (run folders of one executor: make bench's, make leaderboard's).
COST_RUNS ?= runs/bench
costs: $(STAMP)
	$(PY) -m bench plan --calibrate $(COST_RUNS) --costs-out bench/run/costs.json
