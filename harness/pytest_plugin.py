"""pytest plugin: `pytest --host NAME` selects the lab the suite runs against.

Registered through the `pytest11` entry point, so it works from any directory
once svmval is installed.  The default host is `local`: the local lab.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.inventory import LOCAL, HostSpec, Inventory, load_inventory

_INVENTORY_KEY = pytest.StashKey[Inventory]()
_HOSTS_KEY = pytest.StashKey[list[HostSpec]]()
_ARTIFACTS_KEY = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svmval", "svmval lab selection")
    group.addoption(
        "--host",
        action="append",
        dest="svmval_hosts",
        metavar="NAME",
        help="lab host from the inventory to run against (default: local); repeat for several",
    )
    group.addoption(
        "--inventory",
        dest="svmval_inventory",
        metavar="FILE",
        help="lab inventory TOML (default: $SVMVAL_INVENTORY, else labs.toml at the repo root)",
    )
    group.addoption(
        "--artifacts",
        dest="svmval_artifacts",
        metavar="DIR",
        default="artifacts",
        help="directory for run artefacts: consoles, traces, results (default: ./artifacts)",
    )
    group.addoption(
        "--workload",
        action="append",
        dest="svmval_workloads",
        metavar="NAME",
        help="lab runs: run only this workload (repeatable; default: the whole catalog)",
    )
    group.addoption(
        "--require-hardware",
        action="store_true",
        dest="svmval_require_hardware",
        help="nightly lab CI: fail instead of skipping tests marked 'hardware'",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hardware: needs a real PASID-capable device on a lab host (skipped on local)"
    )
    config.addinivalue_line("markers", "slow: boots a VM or builds an image (minutes)")
    # One worker per lab host (the xdist_group marks below) needs xdist's loadgroup;
    # a plain `-n N` would mean "load" and could split one host's tests across workers.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("svmval_loadgroup"):
        config.option.loadgroup = True  # workers parse the bare command line again
    try:
        inventory = load_inventory(config.getoption("svmval_inventory"))
        names = config.getoption("svmval_hosts") or [LOCAL]
        hosts = [inventory.get(name) for name in dict.fromkeys(names)]
    except ConfigError as exc:
        # Fail the session before collecting anything: a typo in --host must not
        # turn into a green run of zero tests.
        raise pytest.UsageError(str(exc)) from None
    config.stash[_INVENTORY_KEY] = inventory
    config.stash[_HOSTS_KEY] = hosts
    config.stash[_ARTIFACTS_KEY] = Path(config.getoption("svmval_artifacts")).resolve()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, on the controller: tell each worker to group tests by host."""
    node.workerinput["svmval_loadgroup"] = node.config.option.dist == "loadgroup"


def pytest_report_header(config: pytest.Config) -> str:
    hosts = config.stash.get(_HOSTS_KEY, [])
    return "svmval hosts: " + ", ".join(f"{h.name} ({h.kind.value})" for h in hosts)


def selected_hosts(config: pytest.Config) -> list[HostSpec]:
    return config.stash[_HOSTS_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One test instance per selected host; with one host the id stays short.
    if "lab_host" in metafunc.fixturenames:
        hosts = selected_hosts(metafunc.config)
        metafunc.parametrize("lab_host", hosts, ids=[h.name for h in hosts], scope="session")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # With pytest-xdist (`-n N`) every test of one lab host runs on one worker: a
    # host's device and lock are never shared between workers.
    for item in items:
        host = _item_host(item, config)
        if host is not None:
            item.add_marker(pytest.mark.xdist_group(name=f"host-{host.name}"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("hardware") is None:
        return
    host = _item_host(item, item.config)
    if host is not None and not host.has_hardware:
        reason = (
            f"host {host.name!r} has no PASID-capable device assigned "
            f"(set 'device' in its inventory entry to run hardware tests)"
        )
        if item.config.getoption("svmval_require_hardware"):
            pytest.fail(f"--require-hardware: {reason}", pytrace=False)
        pytest.skip(reason)


def _item_host(item: pytest.Item, config: pytest.Config) -> HostSpec | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "lab_host" in callspec.params:
        host: HostSpec = callspec.params["lab_host"]
        return host
    hosts = selected_hosts(config)
    return hosts[0] if hosts else None


@pytest.fixture(scope="session")
def inventory(pytestconfig: pytest.Config) -> Inventory:
    """The loaded lab inventory."""
    return pytestconfig.stash[_INVENTORY_KEY]


@pytest.fixture(scope="session")
def host(pytestconfig: pytest.Config) -> HostSpec:
    """The (first) selected host; tests that run on every selected host use `lab_host`."""
    return selected_hosts(pytestconfig)[0]


@pytest.fixture(scope="session")
def artifacts_root(pytestconfig: pytest.Config) -> Path:
    root = pytestconfig.stash[_ARTIFACTS_KEY]
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def artifacts_dir(artifacts_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A per-test folder that is kept after the run, pass or fail."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
    path = artifacts_root / "tests" / safe
    path.mkdir(parents=True, exist_ok=True)
    yield path
