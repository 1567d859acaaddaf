"""The guest's root: debootstrap into a directory, configure it, shrink it, mke2fs -d.

Runs as root on the host (debootstrap and chroot need it) but installs nothing on
the host: the kernel, PoCL and Python all go into the new root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guest_image import recipe
from guest_image.initramfs import parse_modules_dep
from harness.errors import EnvironmentBroken

FILES = Path(__file__).resolve().parent / "files"
Progress = Callable[[str], None]

# Package versions worth a line in the manifest (and in every run's result bundle).
REPORTED_PACKAGES = (
    "python3",
    "python3-numpy",
    "python3-pyopencl",
    "pocl-opencl-icd",
    "ocl-icd-libopencl1",
    "openssh-server",
    "libc6",
)

# Shrinking: nothing in the guest reads these (no man, no locales: C.UTF-8 is built in).
PRUNED_PATHS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
)


class ImageBuildError(EnvironmentBroken):
    """The image could not be built; the message carries the step's log tail."""


def run_logged(argv: list[str], what: str, log: Path, **kw: Any) -> None:
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, check=False, **kw)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise ImageBuildError(
            f"{what} failed (exit {proc.returncode}); full log in {log}; last lines:\n  "
            + "\n  ".join(tail)
        )


def check_host() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the guest image needs root (debootstrap, chroot): run as root"
        )
    missing = [
        t
        for t in ("debootstrap", "mke2fs", "ssh-keygen", "cpio", "chroot")
        if shutil.which(t) is None
    ]
    if missing:
        raise ImageBuildError(f"{', '.join(missing)} not installed; run `make bootstrap`")


def debootstrap(root: Path, mirror: str, debs_cache: Path, log: Path) -> None:
    debs_cache.mkdir(parents=True, exist_ok=True)
    run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(recipe.PACKAGES)}",
            # Keeps the .debs: a rebuild after a recipe change (init script, sshd
            # config) does not download ~300 MB again.
            f"--cache-dir={debs_cache}",
            recipe.SUITE,
            str(root),
            mirror,
        ],
        f"debootstrap {recipe.SUITE} from {mirror}",
        log,
    )


KERNEL_SOURCES = "etc/apt/sources.list.d/svmval-kernel.sources"


def add_kernel_suite(root: Path, mirror: str | None = None) -> None:
    """An apt source for recipe.KERNEL_SUITE in `root` (the kernel and its headers come
    from there); the mirror is the root's own when not given."""
    if mirror is None:
        line = (root / "etc/apt/sources.list").read_text().split()
        mirror = line[1] if len(line) > 1 and line[0] == "deb" else "http://deb.debian.org/debian"
    (root / KERNEL_SOURCES).write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {recipe.KERNEL_SUITE}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def install_kernel(root: Path, mirror: str, debs_cache: Path, log: Path) -> None:
    """recipe.KERNEL_PACKAGE from recipe.KERNEL_SUITE, into the new root with its own apt."""
    add_kernel_suite(root, mirror)
    debs_cache.mkdir(parents=True, exist_ok=True)
    archives = root / "var/cache/apt/archives"
    for deb in debs_cache.glob("*.deb"):  # a rebuild does not download the kernel again
        shutil.copy2(deb, archives)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    apt = ["chroot", str(root), "apt-get", "-q", "-y", "-o", "Acquire::Languages=none",
           "-o", "Dpkg::Options::=--force-unsafe-io"]
    run_logged([*apt, "update"], f"apt-get update in the new root ({recipe.KERNEL_SUITE})", log, env=env)
    # pkg/suite, not -t suite: only the kernel comes from there; -t would also move the
    # packages it touches (linux-libc-dev...) off the image's own suite.
    run_logged([*apt, "--no-install-recommends", "install", f"{recipe.KERNEL_PACKAGE}/{recipe.KERNEL_SUITE}"],
               f"installing {recipe.KERNEL_PACKAGE} from {recipe.KERNEL_SUITE}", log, env=env)
    for deb in archives.glob("linux-*.deb"):
        shutil.copy2(deb, debs_cache)


def drop_kernel_suite(root: Path) -> None:
    (root / KERNEL_SOURCES).unlink(missing_ok=True)


def installed_versions(root: Path) -> dict[str, str]:
    out = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ImageBuildError(f"dpkg-query in the new root {root} failed: {out.stderr.strip()}")
    return dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)


def kernel_release(root: Path) -> str:
    releases = sorted(p.name for p in (root / "lib" / "modules").iterdir())
    if len(releases) != 1:
        raise ImageBuildError(
            f"expected exactly one kernel in {root}/lib/modules, found {releases}: "
            f"recipe.PACKAGES must name one linux-image package"
        )
    return releases[0]


def configure(root: Path, out: Path) -> None:
    """Init, sshd, keys, environment. Keys land beside the image in `out`."""
    shutil.copy2(FILES / "svmval-init", root / recipe.GUEST_INIT.lstrip("/"))
    os.chmod(root / recipe.GUEST_INIT.lstrip("/"), 0o755)
    (root / "etc" / "svmval").mkdir(exist_ok=True)
    (root / "etc" / "svmval" / "modules").write_text(
        "\n".join(recipe.GUEST_MODULES + recipe.OWN_MODULES) + "\n"
    )
    (root / "etc" / "hostname").write_text("svmval-guest\n")
    # For PAM-enabled or console logins; ssh sessions get it from sshd_config's SetEnv.
    (root / "etc" / "environment").write_text(f"POCL_CACHE_DIR={recipe.POCL_CACHE_DIR}\n")
    (root / "etc" / "fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    for d in (recipe.GUEST_WORKDIR, recipe.POCL_CACHE_DIR):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)

    # One ed25519 host key made here: its public half goes beside the image so the
    # harness verifies the guest; the Debian-generated keys are dropped.
    ssh = root / "etc" / "ssh"
    for old in ssh.glob("ssh_host_*"):
        old.unlink()
    _keygen(ssh / "ssh_host_ed25519_key", "svmval-guest")
    shutil.copy2(ssh / "ssh_host_ed25519_key.pub", out / "ssh_host_ed25519_key.pub")
    shutil.copy2(FILES / "sshd_config", ssh / "sshd_config")
    _keygen(out / "id_ed25519", "svmval-harness")
    os.chmod(out / "id_ed25519", 0o600)
    dot_ssh = root / "root" / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(out / "id_ed25519.pub", dot_ssh / "authorized_keys")
    os.chmod(dot_ssh / "authorized_keys", 0o600)
    # debootstrap leaves root's password as "*" (no password can match). Do not
    # `passwd -l` it: without PAM, sshd refuses key logins to "!"-locked accounts.
    shadow = (root / "etc" / "shadow").read_text()
    if not shadow.startswith("root:*:"):
        raise ImageBuildError(
            f"root in {root}/etc/shadow has a password entry other than '*': refusing"
        )


def _keygen(path: Path, comment: str) -> None:
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageBuildError(f"ssh-keygen for {path} failed: {proc.stderr.strip()}")


def prune(root: Path, release: str, log: Path) -> None:
    for rel in PRUNED_PATHS:
        target = root / rel
        if target.exists():
            shutil.rmtree(target)
            target.mkdir()
    modules = root / "lib" / "modules" / release
    deps = parse_modules_dep((modules / "modules.dep").read_text())
    for rel in doomed_modules(deps, recipe.PRUNED_MODULE_DIRS):
        (modules / rel).unlink()
    run_logged(["chroot", str(root), "depmod", "-a", release], "depmod in the new root", log)
    # The kernel and initramfs-tools' initrd live beside the image, not in it.
    for pattern in ("vmlinuz-*", "initrd.img-*", "System.map-*"):
        for path in (root / "boot").glob(pattern):
            path.unlink()
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        for base in (root, root / "boot"):
            if (base / link).is_symlink():
                (base / link).unlink()


def doomed_modules(deps: dict[str, list[str]], pruned_dirs: tuple[str, ...]) -> set[str]:
    """Modules under `pruned_dirs`, plus every module that (transitively) needs one.

    Deleting only the directories would leave e.g. libata needing the pruned SCSI
    core: depmod then drops the dependency silently and a later modprobe spews
    "Unknown symbol". Removing the dependents too keeps modules.dep consistent.
    """
    doomed = {m for m in deps if any(m.startswith(d.rstrip("/") + "/") for d in pruned_dirs)}
    grew = True
    while grew:
        extra = {m for m, ds in deps.items() if m not in doomed and doomed.intersection(ds)}
        doomed |= extra
        grew = bool(extra)
    return doomed


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def make_ext4(root: Path, image: Path, log: Path) -> int:
    """`mke2fs -d` (no loop mount). Returns the size in MiB."""
    # 25% + 256 MiB headroom: ext4 metadata, plus room for the workloads, their
    # outputs and logs (writes go to QEMU's snapshot overlay, never to the image).
    size_mib = int(tree_bytes(root) * 1.25 / 2**20) + 256
    run_logged(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            "svmroot",
            "-d",
            str(root),
            str(image),
            f"{size_mib}M",
        ],
        f"mke2fs -d {root}",
        log,
    )
    return size_mib
