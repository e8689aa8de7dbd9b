# fleet: the two commands a newcomer needs are `make lab` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR ?= 0
comma := ,
PY_SOURCES := filter_plugins callback_plugins strategy_plugins library roles/slot_engine/files roles/backup/files roles/ufw/filter_plugins roles/health_check/files lab services tools bench tests molecule awx

.PHONY: lab lab-up lab-down deps venv releases test checks unit lint molecule integration bench bench-scale clean

## lab: set everything up, start the 3-host lab fleet and converge it with site.yml
lab: deps lab-up releases
	ansible-playbook site.yml

## test: set everything up and run every test (unit, lint, molecule, lab integration)
# The molecule scenarios and the lab integration tests use separate guests, so they run side by
# side, and the unit tests and lint beside them: most of the guests' time is spent waiting on
# guests, not on the two cores.
test: deps
	python3 -m lab build
	$(MAKE) --no-print-directory -j3 checks molecule integration

# Unit tests, then lint; their output labelled like the others'.
checks: venv
	$(MAKE) --no-print-directory unit lint 2>&1 | sed -u 's/^/[checks] /'

deps: venv
	scripts/install-host-deps.sh
	python3 -m lab dockerd

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

lab-up: deps
	python3 -m lab up

lab-down:
	python3 -m lab down

releases:
	python3 tools/build_release.py --all-lab

unit: venv
	pytest -q tests/unit

lint: venv
	yamllint --strict .
	ansible-lint --profile production
	ruff check $(PY_SOURCES)
	mypy $(PY_SOURCES)

# The scenarios test different roles on guests of their own, so they run in two streams, the
# longest scenarios (default, certbot) at the head of each.
MOLECULE_STREAMS := default,logrotate,ufw certbot,backup,health_check

molecule: deps
	python3 -m lab build
	$(MAKE) --no-print-directory -j2 $(addprefix molecule-stream-,$(MOLECULE_STREAMS))

molecule-stream-%:
	for scenario in $(subst $(comma), ,$*); do \
	    started=$$SECONDS; \
	    molecule test -s $$scenario 2>&1 | sed -u "s/^/[molecule:$$scenario] /"; \
	    echo "[molecule:$$scenario] passed in $$((SECONDS - started)) s"; \
	done

# Real hosts over SSH: brings the lab up, runs the playbooks as a user types them, takes it down.
integration: deps
	pytest -v -p no:cacheprovider --durations=12 tests/integration 2>&1 | sed -u 's/^/[integration] /'

## bench: hot deploy vs naive restart under load on the lab (prints figures, draws build/bench/hot_deploy.png)
bench: lab
	python3 -m bench.hot_deploy_bench

## bench-scale: site.yml (first run, no-op) and a rolling deploy on labs of 1, 3, 6 and 10 hosts (prints a table, draws build/bench/scale.png)
bench-scale: deps releases
	python3 -m bench.scale_bench

clean: lab-down
	rm -rf $(VENV) build
