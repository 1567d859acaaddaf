#!/usr/bin/env bash
# Idempotent set-up for svmval on Debian: system packages, then a venv with the
# project installed editable. Called by every Makefile target; safe to re-run.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SVMVAL_VENV:-$here/.venv}
stamp_dir=$venv/.svmval-stamps

say() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi

need_qemu_backports() {
    # Debian bookworm ships QEMU 7.2; scalable-mode first-stage VT-d (x-flts) needs >= 10.0.
    if ! command -v qemu-system-x86_64 >/dev/null; then return 0; fi
    local v
    v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
    [ "${v:-0}" -lt 10 ]
}

apt_pkgs=(
    pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev clinfo binutils
    openssh-server openssh-client busybox-static cpio e2fsprogs xz-utils zstd
    debootstrap iproute2 python3-venv dpkg-dev chromium fonts-dejavu-core
    # svmval's own QEMU build (host_setup/qemu_build)
    libglib2.0-dev libslirp-dev libpixman-1-dev libfdt-dev device-tree-compiler flex bison
    ninja-build pkg-config gcc patch
)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ] || need_qemu_backports; then
    if [ -r /etc/os-release ] && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding the bookworm-backports apt source (QEMU >= 10.0 lives there)"
            mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
            mirror=${mirror:-http://deb.debian.org/debian}
            printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
                | $SUDO tee /etc/apt/sources.list.d/svmval-backports.sources >/dev/null
        fi
    fi
    say "apt-get update"
    $SUDO apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if need_qemu_backports; then
        say "installing QEMU from bookworm-backports (qemu-system-x86, qemu-utils)"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
    fi
fi

# The venv: rebuilt only when pyproject.toml changes.
want=$(sha256sum "$here/pyproject.toml" | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    python3 -m venv "$venv"
fi
if [ "$(cat "$stamp_dir/pyproject" 2>/dev/null)" != "$want" ]; then
    say "installing svmval (editable) with its test extras into $venv"
    log=$venv/pip-install.log
    if ! { "$venv/bin/pip" install -q --upgrade pip && "$venv/bin/pip" install -q -e "$here[test]"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        say "pip install failed; full log: $log"
        exit 1
    fi
    mkdir -p "$stamp_dir"
    echo "$want" >"$stamp_dir/pyproject"
fi

