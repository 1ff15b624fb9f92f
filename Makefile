# minigrpo -- see README.md.  Every target is idempotent; `test` and `demo`
# run the (cheap, stamp-checked) set-up first.
SHELL := /bin/bash
ROOT  := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV  := $(ROOT)/.venv

# extra arguments for pytest, e.g. make test PYTEST_ARGS="-m 'not slow' -x"
PYTEST_ARGS ?=
# scene file rendered by `make demo`, and optional scene class / manim flags
DEMO_FILE  ?= scenes/ppo_logits.py
DEMO_SCENE ?=
MANIM_ARGS ?= -qh

.PHONY: setup test demo clean help

help:
	@echo "make setup  - system packages + .venv (scripts/setup.sh)"
	@echo "make test   - setup, then pytest -q \$$PYTEST_ARGS"
	@echo "make demo   - setup, then render $(DEMO_FILE) into renders/"
	@echo "make clean  - delete render outputs in renders/ (keeps renders/README.md)"

setup:
	@bash "$(ROOT)/scripts/setup.sh"

# pytest exit code 5 = "no tests were collected": treated as a failure.
test: setup
	@cd "$(ROOT)" && rc=0; "$(VENV)/bin/python" -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED - pytest collected no tests (exit code 5)" >&2; fi; \
	exit $$rc

demo: setup
	@cd "$(ROOT)" && test -f "$(DEMO_FILE)" || { echo "make demo: $(DEMO_FILE) does not exist yet" >&2; exit 1; }
	cd "$(ROOT)" && "$(VENV)/bin/manim" $(MANIM_ARGS) $(DEMO_FILE) $(DEMO_SCENE)
	@echo "make demo: output under $(ROOT)/renders/videos/"

clean:
	@cd "$(ROOT)/renders" && find . -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	@echo "make clean: renders/ emptied (README.md kept)"
