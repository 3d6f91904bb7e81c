# hybrid_pipeline: `make run` builds the demo lakehouse, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DAYS ?= 14
EVENTS_PER_DAY ?= 100000
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install run test dev mlflow feast-ui bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first, pinned, so no dependency can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,spark,redis,postgres,ui]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/hybrid-pipeline generate --days $(DAYS) --events-per-day $(EVENTS_PER_DAY)
	$(BIN)/hybrid-pipeline materialize --all-landed
	@echo
	@echo "Lakehouse: ./data/lakehouse   Open the UI with: make dev   (http://127.0.0.1:3000)"

test: install
	$(BIN)/python -m pytest

# `dg dev` reads [tool.dg] in pyproject.toml; VIRTUAL_ENV tells it the project's .venv is the active one.
dev: install
	mkdir -p $(DAGSTER_HOME) && cp -n dagster.yaml $(DAGSTER_HOME)/dagster.yaml || true
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg dev

# MLflow's UI (runs, metrics, the model registry and its aliases) and Feast's UI (entities, feature
# views, feature services) over the stores `make run` wrote; PORT=... to move one.
mlflow: install
	$(BIN)/hybrid-pipeline ui mlflow $(if $(PORT),--port $(PORT))

feast-ui: install
	$(BIN)/hybrid-pipeline ui feast $(if $(PORT),--port $(PORT))

bench: install
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf data .dagster_home
