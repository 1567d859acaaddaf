"""Command channel into a guest: SSH (paramiko) over a 127.0.0.1 port forward.

The guest's host key is known in advance (made at image build), so it is
verified like any lab host's: no blind trust-on-first-use.
"""

from __future__ import annotations

import shlex
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko

from harness.errors import GuestError


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class GuestChannel:
    def __init__(
        self,
        host: str,
        port: int,
        key_file: Path,
        host_key_pub: Path,
        user: str = "root",
        via: Callable[[], Any] | None = None,
    ):
        """`via` opens the socket to use instead of dialling host:port (a channel through
        a lab host's SSH connection to the forward QEMU listens on there)."""
        self.via = via
        self.host, self.port, self.user = host, port, user
        self.key_file = key_file
        self.host_key_pub = host_key_pub
        self.client: paramiko.SSHClient | None = None

    def __enter__(self) -> GuestChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _known_host(self, client: paramiko.SSHClient) -> None:
        keytype, b64 = self.host_key_pub.read_text().split()[:2]
        key = paramiko.PKey.from_type_string(keytype, __import__("base64").b64decode(b64))
        # A forwarded port is its own "host" for known_hosts purposes.
        client.get_host_keys().add(f"[{self.host}]:{self.port}", keytype, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def connect(self, timeout: float = 60) -> None:
        """Retry until sshd answers (it starts a moment after the ready marker)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            self._known_host(client)
            try:
                client.connect(
                    self.host,
                    port=self.port,
                    username=self.user,
                    key_filename=str(self.key_file),
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                    sock=self.via() if self.via else None,
                    banner_timeout=30,
                    auth_timeout=30,
                )
                self.client = client
                return
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise GuestError(
                    f"guest at {self.host}:{self.port} presented a host key that is not the image's "
                    f"({self.host_key_pub}); rebuild the image or check what listens on that port"
                ) from exc
            except (OSError, paramiko.SSHException) as exc:
                client.close()
                last = exc
                time.sleep(0.5)
        raise GuestError(f"SSH to the guest at {self.host}:{self.port} failed for {timeout:.0f} s: {last}")

    def _client(self) -> paramiko.SSHClient:
        if self.client is None:
            self.connect()
        assert self.client is not None
        return self.client

    def run(self, cmd: str, *, timeout: float = 600, env: dict[str, str] | None = None,
            on_line: Callable[[str], None] | None = None) -> CommandResult:
        """Run `cmd` through the guest's shell; stdout/stderr are collected whole, and
        `on_line` sees each stdout line as it arrives (before the command ends)."""
        if env:
            # Exported, not prefixed: a prefix would reach only the first command of
            # `cd DIR && python3 ...`.
            cmd = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; " + cmd
        t0 = time.monotonic()
        transport = self._client().get_transport()
        if transport is None:
            raise GuestError("SSH transport to the guest is gone")
        chan = transport.open_session(timeout=30)
        chan.settimeout(timeout)
        chan.exec_command(cmd)
        out, err = bytearray(), bytearray()
        seen = 0  # bytes of `out` already handed to on_line
        try:
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                    if on_line is not None:
                        end = out.rfind(b"\n") + 1
                        for line in out[seen:end].decode(errors="replace").splitlines():
                            on_line(line)
                        seen = max(seen, end)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                else:
                    if time.monotonic() - t0 > timeout:
                        raise GuestError(f"guest command timed out after {timeout:.0f} s: {cmd}")
                    time.sleep(0.02)
            code = chan.recv_exit_status()
        finally:
            chan.close()
        if code == -1:  # the session closed without an exit status
            raise GuestError(
                f"the guest stopped answering during `{cmd[:200]}`: its SSH session closed without an exit "
                f"status (did QEMU or the guest die? see console.log and qemu.stderr in the run's vm/ folder)"
            )
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0)

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or a directory tree (skipping __pycache__) into the guest."""
        sftp = self._client().open_sftp()
        try:
            self._put(sftp, local, PurePosixPath(remote))
        finally:
            sftp.close()

    def _put(self, sftp: paramiko.SFTPClient, local: Path, remote: PurePosixPath) -> None:
        if local.is_dir():
            try:
                sftp.mkdir(str(remote))
            except OSError:
                pass  # exists
            for child in sorted(local.iterdir()):
                if child.name == "__pycache__":
                    continue
                self._put(sftp, child, remote / child.name)
        else:
            sftp.put(str(local), str(remote))

    def get(self, remote: str, local: Path) -> None:
        sftp = self._client().open_sftp()
        try:
            if stat.S_ISDIR(sftp.stat(remote).st_mode or 0):
                raise GuestError(f"{remote} is a directory; get() copies files")
            sftp.get(remote, str(local))
        finally:
            sftp.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
