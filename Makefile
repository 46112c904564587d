# One-command set-up: `make demo` runs the main job, `make test` the test suite.
# Both create the virtual environment (.venv) from the pinned requirements when missing.
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) test

# The shipped CamVid bag with live mIoU; SOURCE=synthetic (generated frames) or a folder / video / bag.
demo: setup
	$(PY) -m enet_seg_ros.ros.demo $(if $(SOURCE),--source $(SOURCE),) --out out/demo

bench: setup
	$(VENV)/bin/enet-seg bench --arch all --backend all --size 480x320,640x360,1280x720 \
		--json out/bench.json --markdown out/bench.md

clean:
	rm -rf out build install log .pytest_cache
