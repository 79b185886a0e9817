# `make run`: set up and run the main job. `make test`: set up and run every test.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STORAGE ?= sqlite:///oialr.db
PORT    ?= 8501
# Packages the tests and the quickstart need from Debian (skipped where apt is not available).
APT_PKGS := dataset-fashion-mnist chromium postgresql

.PHONY: setup system run test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the project's metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

system:
	@if command -v apt-get >/dev/null 2>&1; then \
	  missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages: $$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  fi; \
	else echo "apt-get not found: install $(APT_PKGS) yourself"; fi

setup: $(VENV)/.installed system

# The main job: the quickstart study in the background, the dashboard in the foreground.
run: setup
	@echo "quickstart study running in the background (log: quickstart.log)"
	$(BIN)/oialr study run studies/quickstart.toml --storage $(STORAGE) --quiet > quickstart.log 2>&1 &
	@echo "dashboard: http://127.0.0.1:$(PORT)  (Ctrl-C stops it; the study goes on)"
	$(BIN)/streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.port $(PORT) \
	  --server.headless true --browser.gatherUsageStats false -- --storage $(STORAGE)

# The layering contracts first (seconds), then every test. pytest exits 5 when it collects
# nothing: that is a failure here, as any other non-zero code.
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
