"""Lab hosts over real SSH: a Debian sshd started by the test on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.sshd import Sshd

from harness.inventory import load_inventory
from harness.remote import AuthFailed, HostKeyRejected, HostUnreachable, SshTarget


def test_runs_commands_with_the_host_key_verified(sshd: Sshd) -> None:
    host = load_inventory(sshd.inventory()).get("sshtest")
    with SshTarget(host) as t:
        r = t.run("echo hello; echo oops >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr) == (3, "hello\n", "oops\n")
        assert t.read_text("/proc/self/status") is not None
        assert t.read_text("/no/such/file") is None


def test_wrong_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kt, kb = (other.with_suffix(".pub")).read_text().split()[:2]
    sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kt} {kb}\n")
    host = load_inventory(sshd.inventory()).get("sshtest")
    with pytest.raises(HostKeyRejected, match="host key"):
        SshTarget(host).connect()


def test_unknown_host_key_is_refused_by_default(sshd: Sshd) -> None:
    sshd.known_hosts.write_text("")
    host = load_inventory(sshd.inventory()).get("sshtest")
    with pytest.raises(HostKeyRejected):
        SshTarget(host).connect()


def test_explicit_insecure_opt_out_is_logged(sshd: Sshd, caplog: pytest.LogCaptureFixture) -> None:
    sshd.known_hosts.write_text("")
    host = load_inventory(sshd.inventory(known_hosts_policy="accept-new-insecure")).get("sshtest")
    with SshTarget(host) as t:
        assert t.run("true").ok
    assert "host key not verified" in caplog.text


def test_auth_failure_names_the_key(sshd: Sshd, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    inv = sshd.inventory()
    inv.write_text(inv.read_text().replace(str(sshd.key), str(stranger)))
    host = load_inventory(inv).get("sshtest")
    with pytest.raises(AuthFailed, match="stranger"):
        SshTarget(host).connect()


def test_unreachable_host(sshd: Sshd) -> None:
    inv = sshd.inventory()
    inv.write_text(inv.read_text().replace(f"port = {sshd.port}", "port = 1"))
    host = load_inventory(inv).get("sshtest")
    with pytest.raises(HostUnreachable, match="cannot connect"):
        SshTarget(host, connect_timeout=3).connect()


def test_preflight_over_ssh_prints_a_verdict_table(sshd: Sshd) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "--inventory", str(sshd.inventory()), "preflight", "--host", "sshtest"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert "preflight: sshtest" in out.stdout, out.stderr
    assert "DMAR" in out.stdout or "VT-d" in out.stdout
    # this build machine has no VT-d: the run must say it cannot go on, with the fix
    assert out.returncode == 1
