# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501
FILMS ?= ../shared/data/chest_xray/external/PNEUMONIA

.PHONY: run test venv dev bench clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(BIN)/.installed-dev: requirements-dev.txt $(BIN)/.installed
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed
dev: $(BIN)/.installed-dev

# The model loads as the server starts (appkit/serve.py); no file watcher (it watched .venv and overflowed).
run: $(BIN)/.installed
	$(BIN)/python -m appkit.serve --server.port $(PORT) --server.fileWatcherType none

test: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed-dev
	$(BIN)/python bench/cpu_latency.py --films $(FILMS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
