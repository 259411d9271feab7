# The two commands of the README do everything on a fresh Debian 12 machine:
#   make image   builds the live ISO and PXE bundle
#   make test    runs the whole suite
PY := .venv/bin/python
PYTEST := $(PY) -m pytest
FERRY_CACHE ?= $(HOME)/.cache/ferry
export FERRY_CACHE

.PHONY: setup test test-fast test-image lint bench image clean clean-cache

setup:
	@packaging/setup-host

lint: setup
	@$(PY) -m ruff check converters tui tests
	@$(PY) -m ruff format --check converters tui tests

# Two workers: the QEMU guests that fill the suite run one emulated CPU
# each, so two of them use both cores. loadscope keeps a module's (or a
# test class's) tests, and so its expensive fixtures, on one worker; the
# order is tests/conftest.py's (longest first), not xdist's.
XDIST := -n 2 --dist loadscope --no-loadscope-reorder
test: lint
	$(PYTEST) tests -m "not bench" $(XDIST) --durations=30

test-fast: lint
	$(PYTEST) tests -m "not slow and not bench" --durations=15

# The live image's tests alone (they are part of make test too).
test-image: lint
	$(PYTEST) tests -m image $(XDIST) --durations=15

bench: setup
	$(PYTEST) tests -m bench -s -p no:cacheprovider

# build/ferry-live.iso and build/pxe/ (docs/image.md); cached under
# $(FERRY_CACHE)/image, so an unchanged tree builds nothing. With
# FERRY_KEYS="ferry.mode=p2v ..." also build/ferry-live-unattended.iso.
image: setup
	@$(PY) -m image.build --output build $(if $(FERRY_KEYS),--keys "$(FERRY_KEYS)")

clean:
	rm -rf build .pytest_cache

clean-cache:
	rm -rf "$(FERRY_CACHE)"
