# `make arena` runs rnnlab's main job (the arena's default preset); `make test` runs the test suite.
# Both create .venv on first use (CPU torch where none is installed) and reinstall when
# pyproject.toml changes.
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: arena test bench clean

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	sh scripts/setup_env.sh $(VENV)

arena: $(VENV)/.installed
	$(BIN)/rnnlab arena

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/rnnlab bench sequential

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
