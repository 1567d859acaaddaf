from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.fakehost import FakeHost, fake_host
from support.sshd import Sshd, running_sshd

from harness.inventory import HostSpec, load_inventory


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with running_sshd(tmp_path / "sshd") as s:
        yield s


@dataclass
class Lab:
    """A lab host for a test: a real sshd on 127.0.0.1 in front of a captured host's tree."""

    fake: FakeHost
    sshd: Sshd
    workdir: Path

    def inventory(self, **fields: str | int) -> Path:
        fields = {"device": self.fake.bdf, "sysroot": str(self.fake.root), "workdir": str(self.workdir),
                  "nesting": "none", **fields}
        return self.sshd.inventory("sshtest", **fields)  # the host name host() looks up

    def host(self, **fields: str | int) -> HostSpec:
        return load_inventory(self.inventory(**fields)).get("sshtest")

    @property
    def lock(self) -> Path:
        return self.workdir / "host.lock"


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[[str], Lab]]:
    """make_lab("spr-dsa"): the captured host behind its own sshd."""
    with ExitStack() as stack:

        def make(name: str) -> Lab:
            root = tmp_path / name
            fake = stack.enter_context(fake_host(name, root / "sysroot"))
            sshd = stack.enter_context(running_sshd(root / "sshd", path_prefix=fake.bin))
            return Lab(fake, sshd, root / "work")

        yield make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests behind a real sshd take seconds each: marked `sshd`, which `make check` leaves out."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and {"sshd", "make_lab"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sshd)
