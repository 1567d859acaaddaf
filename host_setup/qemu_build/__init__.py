"""svmval's own QEMU, built from Debian's `qemu` source package with svmval's patches
(patches/) and test devices (device/); see README.md."""

from __future__ import annotations

from host_setup.qemu_build.build import cached_svmval_qemu, ensure_svmval_qemu

__all__ = ["cached_svmval_qemu", "ensure_svmval_qemu"]
