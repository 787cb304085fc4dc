# Every target creates the environment it needs: a fresh machine needs only Python 3.11 and make.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= cpu
PRESET ?= cpu

.PHONY: reproduce test test-learning smoke lint bench env clean-outputs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

env: $(STAMP)

# The whole study on the cpu preset; a second call with the same RUN skips finished stages.
reproduce: $(STAMP)
	$(PY) -m delrec_lib run --preset $(PRESET) --run-dir outputs/$(RUN)

# The whole notebook series on the smoke preset (minutes).
smoke: $(STAMP)
	$(PY) -m delrec_lib run --preset smoke --run-dir outputs/smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# Stage 1 learns: the cpu preset's known answer trained, then again with its gradient off (about ten minutes).
test-learning: $(STAMP)
	$(PY) -m pytest -m learning

bench: $(STAMP)
	$(PY) -m delrec_lib.bench all
