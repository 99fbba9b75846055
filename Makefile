VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench pictures web

setup:
	@bash scripts/setup.sh

# Boot the engine on the packaged stories260K model in QEMU and stream the story.
demo: setup
	$(BIN)/bootllama run

# two pytest-xdist workers, a test file each at a time, the long files first (tests/conftest.py);
# a worker that dies (killed, out of memory) ends the run with that test failed, as it would
# end a run without workers (restarted workers re-run the file and can leave the run waiting)
test: setup
	$(BIN)/ruff check src tests bench tools && \
	    $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0

# build the web page's site (./site) and serve it on 127.0.0.1 until Ctrl-C
web: setup
	$(BIN)/bootllama web -o site --serve

# checks over ~20 s each: libm over whole float ranges, the full engine sweep, the real
# SmolLM2-135M-Instruct (convert it, ask it questions), the web page's form
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python bench/bench_reference.py
	$(BIN)/python bench/bench_engine.py

# docs/size_map.png and docs/screenshot.png
pictures: setup
	@bash tools/pictures.sh
