"""Module dependency resolution, against the real modules.dep of the guest kernel."""

from __future__ import annotations

import pytest

from guest_image import recipe
from guest_image.initramfs import load_order, module_name, parse_modules_builtin, parse_modules_dep
from guest_image.rootfs import doomed_modules
from harness.errors import ConfigError


def names(order: list[str]) -> list[str]:
    return [module_name(p) for p in order]


def test_real_modules_dep_parses_with_ext4_dependencies(real_modules_dep: str) -> None:
    deps = parse_modules_dep(real_modules_dep)
    assert len(deps) > 1000
    assert deps["kernel/fs/ext4/ext4.ko.xz"] == [
        "kernel/lib/crc/crc16.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.xz",
    ]
    assert deps["kernel/drivers/block/virtio_blk.ko.xz"] == []


def test_initramfs_modules_of_the_recipe_resolve_dependencies_first(
    real_modules_dep: str, real_modules_builtin: str
) -> None:
    deps = parse_modules_dep(real_modules_dep)
    order = names(
        load_order(deps, recipe.INITRAMFS_MODULES, parse_modules_builtin(real_modules_builtin))
    )
    assert sorted(order) == sorted(
        ["virtio_blk", "crc16", "mbcache", "jbd2", "ext4"]
    )
    for dep in ("crc16", "mbcache", "jbd2"):
        assert order.index(dep) < order.index("ext4")


def test_shared_dependencies_load_once_and_hyphenated_names_match(real_modules_dep: str) -> None:
    deps = parse_modules_dep(real_modules_dep)
    order = names(load_order(deps, ("vfio_pci", "vfio-iommu-type1", "vfio")))
    assert order.count("vfio") == 1 and order.count("irqbypass") == 1
    assert order.index("vfio") < order.index("vfio_pci_core") < order.index("vfio_pci")
    assert order.index("irqbypass") < order.index("vfio_pci_core")
    assert order.index("vfio") < order.index("vfio_iommu_type1")


def test_every_guest_module_exists_in_the_kernel(
    real_modules_dep: str, real_modules_builtin: str
) -> None:
    deps = parse_modules_dep(real_modules_dep)
    order = names(
        load_order(deps, recipe.GUEST_MODULES, parse_modules_builtin(real_modules_builtin))
    )
    assert {"virtio_net", "net_failover", "failover", "virtio_rng", "vfio_pci"} <= set(order)


def test_builtin_modules_are_skipped_not_errors(
    real_modules_dep: str, real_modules_builtin: str
) -> None:
    builtin = parse_modules_builtin(real_modules_builtin)
    assert "virtio_pci" in builtin  # VIRTIO_PCI=y in Debian's kernel
    assert load_order(parse_modules_dep(real_modules_dep), ("virtio_pci",), builtin) == []


def test_unknown_module_names_the_input_and_the_fix(real_modules_dep: str) -> None:
    with pytest.raises(ConfigError, match=r"'virtio_blkk'.*INITRAMFS_MODULES.*fix the name"):
        load_order(parse_modules_dep(real_modules_dep), ("virtio_blkk",))


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("kernel/fs/ext4/ext4.ko.xz", "ext4"),
        ("kernel/drivers/vfio/pci/vfio-pci.ko.zst", "vfio_pci"),
        ("kernel/arch/x86/crypto/crc32c-intel.ko.gz", "crc32c_intel"),
        ("extra/foo.ko", "foo"),
    ],
)
def test_module_name_strips_compression_and_normalises_hyphens(path: str, name: str) -> None:
    assert module_name(path) == name


def test_pruning_a_directory_also_drops_modules_that_need_it() -> None:
    deps = parse_modules_dep(
        "kernel/drivers/scsi/scsi_mod.ko.xz:\n"
        "kernel/drivers/ata/libata.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz\n"
        "kernel/drivers/ata/ahci.ko.xz: kernel/drivers/ata/libata.ko.xz\n"
        "kernel/drivers/scsi-extra/keep.ko.xz:\n"
        "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz\n"
        "kernel/lib/crc16.ko.xz:\n"
    )
    assert doomed_modules(deps, ("kernel/drivers/scsi",)) == {
        "kernel/drivers/scsi/scsi_mod.ko.xz",
        "kernel/drivers/ata/libata.ko.xz",
        "kernel/drivers/ata/ahci.ko.xz",
    }


def test_the_recipes_pruning_keeps_every_module_the_guest_loads(real_modules_dep: str) -> None:
    deps = parse_modules_dep(real_modules_dep)
    doomed = {module_name(p) for p in doomed_modules(deps, recipe.PRUNED_MODULE_DIRS)}
    needed = names(load_order(deps, (*recipe.INITRAMFS_MODULES, *recipe.GUEST_MODULES)))
    assert not doomed.intersection(needed)
