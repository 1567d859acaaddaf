# svmval: every target bootstraps what it needs (Debian packages, the venv).
# Run as root, or as a user with sudo.

VENV      ?= .venv
PY        := $(VENV)/bin/python
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

.PHONY: bootstrap smoke test check fuzz bench lint clean

bootstrap:
	@bash scripts/bootstrap.sh

## The main job on the local lab: build/reuse the guest image, boot it under the
## emulated VT-d, run the workload catalog, check QI/PRQ/translations, report.
smoke: bootstrap
	$(VENV)/bin/svmval run --host local --artifacts $(ARTIFACTS)

## Lint, then the suite's own tests plus the end-to-end tests on the local lab. Every
## test's outcome goes to $(ARTIFACTS)/pytest-log.jsonl as it finishes (a crashed run
## still leaves its log); each test has a time limit (pyproject.toml, pytest-timeout).
test: lint
	@mkdir -p $(ARTIFACTS)
	$(PY) -m pytest --host local --artifacts $(ARTIFACTS) -p no:cacheprovider \
		--report-log=$(ARTIFACTS)/pytest-log.jsonl $(PYTEST_ARGS)

## The quick loop: lint and the tests that start no QEMU, no guest and no sshd (under a minute).
check: lint
	$(PY) -m pytest -m "not slow and not qemu and not sshd" -p no:cacheprovider -q -n 2 --timeout 120 $(PYTEST_ARGS)

## Hypothesis fuzzing of the trace reader, the codecs and the walk (tests/fuzz) with
## FUZZ_EXAMPLES per test (9 tests: >= 100,000 in all), new inputs each run, no database
## left behind; prints the total examples run. `make check` runs the same tests, 50 each.
FUZZ_EXAMPLES ?= 12000
fuzz: bootstrap
	SVMVAL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -m fuzz -p no:cacheprovider -q \
		--timeout 3000 $(PYTEST_ARGS)

## Speed and memory targets: model throughput, trace checking, SVM bandwidth.
bench: bootstrap
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: bootstrap
	$(VENV)/bin/ruff check workloads harness guest_image host_setup reports tests benchmarks
	$(VENV)/bin/mypy workloads harness guest_image host_setup reports

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache
