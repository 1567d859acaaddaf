"""A real OpenSSH sshd on 127.0.0.1 with throwaway keys: the lab host tests talk to."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path  # the client's private key (authorized for root)
    host_key_pub: Path
    known_hosts: Path
    dir: Path

    def inventory(self, name: str = "sshtest", **fields: str | int) -> Path:
        extra = "".join(f'{k} = {v if isinstance(v, int) else chr(34) + v + chr(34)}\n' for k, v in fields.items())
        path = self.dir / "labs.toml"
        path.write_text(
            f'[hosts.{name}]\naddress = "127.0.0.1"\nport = {self.port}\nuser = "root"\n'
            f'key_file = "{self.key}"\nknown_hosts = "{self.known_hosts}"\n{extra}'
        )
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_sshd(tmp: Path, *, path_prefix: Path | None = None) -> Iterator[Sshd]:
    """`path_prefix` goes first on the PATH of every session (a fake host's commands)."""
    tmp.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client.pub").read_text())
    port = _free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        + (f"SetEnv PATH={path_prefix}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
           if path_prefix else "")
    )
    host_pub = (tmp / "host.pub").read_text().split()
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "sshd.log", "wb"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(tmp / 'sshd.log').read_text()}") from None
                time.sleep(0.05)
        yield Sshd(port, tmp / "client", tmp / "host.pub", tmp / "known_hosts", tmp)
    finally:
        proc.terminate()
        proc.wait(10)
