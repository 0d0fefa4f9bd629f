# Two commands on a fresh machine: `make test` and `make bench` create .venv and install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-slow lint bench smoke world

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check bench methods tests

bench: smoke

# Every method on a tiny *random* pipeline: the real code path end to end, a mechanics check.
smoke: $(STAMP)
	$(PY) -m bench smoke --out runs/smoke

world: $(STAMP)
	$(PY) -m bench.world build --out datasets/conceptworld
