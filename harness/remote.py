"""One way to run commands and read files on a lab host, local or over SSH (fabric).

Host keys are verified by default: the key must be in the inventory's known_hosts
file (paramiko's RejectPolicy). `known_hosts_policy = "accept-new-insecure"` is an
explicit opt-out for throwaway labs, and it is logged. Every connection and every
command has a timeout. The host's `sysroot` prefixes every /sys, /proc and /dev path
preflight and provisioning touch, so the same code runs against a captured host tree.
A dropped connection is `HostUnreachable`; `reconnect()` tries again for a while, so
restore can still run after a network blip.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

from harness.errors import EnvironmentBroken
from harness.guest import CommandResult
from harness.inventory import HostSpec, KnownHostsPolicy

log = logging.getLogger(__name__)


class HostUnreachable(EnvironmentBroken):
    pass


class HostKeyRejected(EnvironmentBroken):
    pass


class AuthFailed(EnvironmentBroken):
    pass


class CommandTimeout(EnvironmentBroken):
    pass


class ConnectionLost(HostUnreachable):
    pass


class Target(ABC):
    """What preflight and provisioning need of a host: run a command, read and write its
    files. One API whether the host is this machine (LocalTarget) or over SSH (SshTarget)."""

    host: HostSpec
    sysroot: str

    @abstractmethod
    def _where(self) -> str: ...

    @abstractmethod
    def run(self, cmd: str, *, timeout: float = 60) -> CommandResult: ...

    @abstractmethod
    def reconnect(self, *, within: float = 60) -> None:
        """Reach the host again after a lost connection."""

    def check(self, cmd: str, *, timeout: float = 60) -> str:
        """Run `cmd`; its stdout, or EnvironmentBroken naming the command and its stderr."""
        r = self.run(cmd, timeout=timeout)
        if not r.ok:
            raise EnvironmentBroken(f"{self._where()}: `{cmd}` failed (exit {r.exit_code}): {r.stderr.strip()[-500:]}")
        return r.stdout

    def write_text(self, p: str, text: str, *, timeout: float = 30) -> None:
        """Write `text` to a host file (a sysfs attribute, a journal) as the shell's `>` does."""
        self.check(f"printf %s {shlex.quote(text)} > {shlex.quote(self.path(p))}", timeout=timeout)

    def path(self, p: str) -> str:
        """Where a host path is read: /sys, /proc and /dev under the sysroot, if any."""
        if self.sysroot and p.startswith(("/sys/", "/proc/", "/dev/")):
            return f"{self.sysroot.rstrip('/')}{p}"
        return p

    def read_text(self, p: str, *, timeout: float = 30) -> str | None:
        """A file's contents, or None when it does not exist."""
        r = self.run(f"cat {self.path(p)!r} 2>/dev/null", timeout=timeout)
        return r.stdout if r.ok else None

    def listdir(self, p: str) -> list[str]:
        r = self.run(f"ls -1 {self.path(p)!r} 2>/dev/null")
        return r.stdout.split() if r.ok else []

    def exists(self, p: str) -> bool:
        return self.run(f"test -e {self.path(p)!r}").ok

    def readlink(self, p: str) -> str | None:
        r = self.run(f"readlink {self.path(p)!r}")
        return r.stdout.strip() if r.ok else None


class SshTarget(Target):
    """A lab host over SSH. Use as a context manager."""

    def __init__(self, host: HostSpec, *, connect_timeout: float = 15):
        self.host = host
        self.sysroot = host.sysroot
        self.connect_timeout = connect_timeout
        self.conn: Connection | None = None

    def __enter__(self) -> SshTarget:
        self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _where(self) -> str:
        return f"host {self.host.name!r} ({self.host.user}@{self.host.address}:{self.host.port})"

    def connect(self) -> None:
        h = self.host
        conn = Connection(
            h.address, user=h.user, port=h.port, connect_timeout=self.connect_timeout,
            connect_kwargs={
                "key_filename": str(h.key_file) if h.key_file else None,
                "look_for_keys": False, "allow_agent": False,
                "banner_timeout": self.connect_timeout, "auth_timeout": self.connect_timeout,
            },
        )
        client = conn.client
        if h.known_hosts is not None and h.known_hosts.exists():
            client.load_host_keys(str(h.known_hosts))
        if h.known_hosts_policy is KnownHostsPolicy.ACCEPT_NEW_INSECURE:
            log.warning("%s: host key not verified (known_hosts_policy = accept-new-insecure)", self._where())
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            conn.open()
        except (paramiko.BadHostKeyException, paramiko.SSHException) as exc:
            if isinstance(exc, paramiko.BadHostKeyException) or "not found in known_hosts" in str(exc):
                raise HostKeyRejected(
                    f"{self._where()}: its host key is not the one in {h.known_hosts}: {exc}. "
                    f"If the host was reinstalled, update known_hosts (ssh-keyscan -p {h.port} {h.address})"
                ) from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise AuthFailed(f"{self._where()}: key {h.key_file} was refused; install its public "
                                 f"half in the host's authorized_keys") from None
            raise HostUnreachable(f"{self._where()}: SSH failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise HostUnreachable(f"{self._where()}: cannot connect: {exc}; check address, port and "
                                  f"that sshd runs") from None
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def reconnect(self, *, within: float = 60) -> None:
        """Drop the old session and connect again, retrying until `within` seconds pass."""
        self.close()
        deadline = time.monotonic() + within
        while True:
            try:
                self.connect()
                return
            except (HostKeyRejected, AuthFailed):
                raise
            except HostUnreachable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    @property
    def transport(self) -> paramiko.Transport:
        if self.conn is None:
            self.connect()
        assert self.conn is not None and self.conn.transport is not None
        return self.conn.transport

    def run(self, cmd: str, *, timeout: float = 60) -> CommandResult:
        if self.conn is None:
            self.connect()
        assert self.conn is not None
        t0 = time.monotonic()
        try:
            r = self.conn.run(cmd, hide=True, warn=True, timeout=timeout, in_stream=False)
        except CommandTimedOut:
            raise CommandTimeout(f"{self._where()}: `{cmd}` did not finish in {timeout:.0f} s") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            why = str(exc) or type(exc).__name__
            raise ConnectionLost(f"{self._where()}: lost the SSH connection during `{cmd}`: {why}") from None
        if r.exited == -1:  # the channel closed without an exit status: the connection went
            self.close()
            raise ConnectionLost(f"{self._where()}: lost the SSH connection during `{cmd}` (no exit status)")
        return CommandResult(r.exited, r.stdout, r.stderr, time.monotonic() - t0)

    def put(self, local: Path, remote: str) -> None:
        if self.conn is None:
            self.connect()
        assert self.conn is not None
        try:
            self.conn.put(str(local), remote)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"{self._where()}: copying {local} to {remote} failed: {exc}") from None

    def get(self, remote: str, local: Path) -> None:
        if self.conn is None:
            self.connect()
        assert self.conn is not None
        try:
            self.conn.get(remote, str(local))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"{self._where()}: fetching {remote} failed: {exc}") from None


class LocalTarget(Target):
    """This machine as a host: the same commands through the local shell."""

    def __init__(self, host: HostSpec):
        self.host = host
        self.sysroot = host.sysroot

    def __enter__(self) -> LocalTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _where(self) -> str:
        return f"host {self.host.name!r} (this machine)"

    def reconnect(self, *, within: float = 60) -> None:
        """Nothing to reach again: this machine has no connection to lose."""

    def run(self, cmd: str, *, timeout: float = 60) -> CommandResult:
        t0 = time.monotonic()
        try:
            r = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"{self._where()}: `{cmd}` did not finish in {timeout:.0f} s") from None
        return CommandResult(r.returncode, r.stdout, r.stderr, time.monotonic() - t0)
