VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

# Boot the engine (`bootllama run`); until that command exists, show the reference instead.
demo: setup
	@if $(BIN)/bootllama run --help >/dev/null 2>&1; then \
		$(BIN)/bootllama run; \
	else \
		echo "(bootllama run is not there yet: showing the reference's story)"; \
		$(BIN)/bootllama generate; \
	fi

test: setup
	$(BIN)/ruff check src tests bench && $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/bench_reference.py
