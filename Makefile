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

## mypy over tests/ as pytest imports them. tests/ has no __init__.py, so pytest (rootdir-less,
## import mode prepend) puts each test file's directory on sys.path: every test directory is
## its own import root (`import rig`, `from conftest import Lab`, `from fuzzcount import ...`),
## and so is tests/ (tests/conftest.py, `from support.sshd import ...`). In one mypy run the
## seven conftest.py would all be module `conftest`: one run per directory instead, with that
## directory and tests/ on MYPYPATH (--explicit-package-bases names a file from the nearer).
## Test code is held to what harness/ already meets: every def annotated.
MYPY_TESTS     := --explicit-package-bases --disallow-untyped-defs --disallow-incomplete-defs \
                  --cache-dir .mypy_cache/tests --no-error-summary
MYPY_TEST_DIRS  = $(filter-out tests/support/,$(sort $(dir $(wildcard tests/*/*.py))))

lint: bootstrap
	$(VENV)/bin/ruff check workloads harness guest_image host_setup reports tests benchmarks
	$(VENV)/bin/mypy workloads harness guest_image host_setup reports
	@rc=0; \
	MYPYPATH=tests $(VENV)/bin/mypy $(MYPY_TESTS) tests/conftest.py tests/support || rc=1; \
	for d in $(MYPY_TEST_DIRS); do \
		MYPYPATH=tests:$$d $(VENV)/bin/mypy $(MYPY_TESTS) $$d || rc=1; \
	done; \
	[ $$rc = 0 ] && echo "mypy tests/: no issues ($(words $(MYPY_TEST_DIRS)) directories, tests/conftest.py, tests/support)"; \
	exit $$rc

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache
