# The two set-up commands of the README, and a few helpers.  Each target sets up .venv first.
.PHONY: setup demo test test-fast napari bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/diffinfinite demo --out demo_out

test:
	bash scripts/setup.sh --gui
	xvfb-run -a env QT_QPA_PLATFORM=xcb .venv/bin/python -m pytest -p no:cacheprovider tests

# the unit tests only (no GUI, nothing slow: see SLOW in tests/conftest.py); `make test` runs everything
test-fast:
	bash scripts/setup.sh
	.venv/bin/python -m pytest -p no:cacheprovider -m "not slow and not gui" --ignore=tests/gui tests

napari:
	bash scripts/setup.sh --gui
	.venv/bin/python -m napari_diffinfinite.launch

bench: setup
	.venv/bin/python benchmarks/bench_sampler.py
