"""Errors of svmval's QEMU build: each names what is missing and how to get it."""

from __future__ import annotations

from harness.errors import EnvironmentBroken


class QemuBuildError(EnvironmentBroken):
    """svmval's own QEMU cannot be built here."""


class SourceUnavailable(QemuBuildError):
    """Debian's `qemu` source package cannot be fetched (or does not verify)."""


class MissingBuildPackage(QemuBuildError):
    """A Debian package (or a PyPI package of the build venv) the build needs is absent."""

    def __init__(self, packages: list[str], fix: str):
        self.packages = packages
        super().__init__(f"building svmval's QEMU needs {', '.join(packages)}: {fix}")


class PatchFailed(QemuBuildError):
    """A patch of host_setup/qemu_build/patches/ does not apply to the fetched source."""
