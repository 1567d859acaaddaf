"""`svmval boot`: boot the local-lab guest, run one command in it, shut down."""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from guest_image.build import ensure_image
from harness.inventory import load_inventory
from harness.qemu.session import local_guest
from harness.qemu.sid import ensure_sid_qemu, local_qemu

console = Console(stderr=True)


def guest_command(words: tuple[str, ...]) -> str:
    """The shell line run in the guest: one word is a command line of its own
    (`-- 'dmesg | tail'`); several are a program and its arguments, each quoted as a
    shell would, so `-- python3 -c 'import sys; print(1)'` keeps its argument whole."""
    if not words:
        return "uname -a"
    return words[0] if len(words) == 1 else shlex.join(words)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="local", show_default=True, help="inventory host (boot runs the local lab)")
@click.option("--artifacts", type=click.Path(file_okay=False), help="keep console/trace here")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def boot(ctx: click.Context, host: str, artifacts: str | None, cmd: tuple[str, ...]) -> None:
    """Boot the guest, run CMD in it (default: uname -a), print its output, shut down.

    One CMD word is a shell command line ('dmesg | tail'); several are a program and
    its arguments, passed on with their quoting."""
    spec = load_inventory(ctx.obj.get("inventory") if ctx.obj else None).get(host)
    if not spec.is_local:
        raise click.UsageError(f"boot runs the local lab; for {host!r} use `svmval run --host {host}`")
    command = guest_command(cmd)
    run_dir = Path(artifacts) if artifacts else Path(tempfile.mkdtemp(prefix="svmval-boot-"))
    with console.status("guest image") as status:
        say = lambda msg: status.update(escape(msg))  # noqa: E731 - user text, not markup
        image = ensure_image(say)
        with local_guest(image, run_dir / "vm", memory_mib=spec.guest_memory_mib, cpus=spec.guest_cpus,
                         qemu_binary=local_qemu(spec.qemu), say=say) as guest:
            status.update(escape(f"running: {command}"))
            result = guest.channel.run(command)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    console.print(f"[dim]{escape(f'artefacts: {run_dir}')}; boot {guest.boot_s:.1f} s guest time[/]")
    ctx.exit(result.exit_code)


@click.group()
def qemu() -> None:
    """QEMU builds the local lab can use."""


@qemu.command("install-sid")
@click.option("--force", is_flag=True, help="rebuild even when one is cached")
def install_sid(force: bool) -> None:
    """Fetch QEMU 11.x from Debian sid into the cache (no host install); select it for
    the local lab with `qemu = "sid"` in the inventory's [hosts.local]."""
    with console.status("QEMU from sid") as status:
        path = ensure_sid_qemu(lambda msg: status.update(escape(msg)), force=force)
    click.echo(path)


@qemu.command("build")
@click.option("--force", is_flag=True, help="fetch the source anew (a newer Debian version if one serves) and rebuild")
def build(force: bool) -> None:
    """Build svmval's own QEMU (Debian's qemu source + svmval's VT-d patches and test
    devices) into the cache and print its path; select it for the local lab with
    `qemu = "svmval"` in the inventory's [hosts.local]."""
    from host_setup.qemu_build import ensure_svmval_qemu

    with console.status("svmval's QEMU") as status:
        path = ensure_svmval_qemu(lambda msg: status.update(escape(msg)), force=force)
    click.echo(path)


@click.group()
def trace() -> None:
    """Look at a QEMU vtd_* trace."""


@trace.command("stats")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--formats", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="trace-events-all of the QEMU that wrote it (a bundle's vm/trace-formats; "
                   "default: beside the trace, else the installed QEMU's)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout, for scripts")
def trace_stats_cmd(path: Path, formats: Path | None, as_json: bool) -> None:
    """Lines, QEMU version guess, events per name, descriptors per type, translations,
    faults and the lines that do not parse (file:line)."""
    import json

    from rich.table import Table

    from harness.trace.stats import trace_stats

    if formats is None and (path.parent / "trace-formats").exists():
        formats = path.parent / "trace-formats"
    stats = trace_stats(path, formats)
    if as_json:
        click.echo(json.dumps(stats.to_json(), indent=1))
        return
    out = Console()
    out.print(escape(f"{path}: {stats.lines} lines, QEMU {stats.qemu_guess}; {stats.translations} translations, "
                     f"{stats.faults} fault events, {len(stats.bad)} bad lines"), highlight=False)
    for title, counts in (("events", stats.events), ("invalidation descriptors", stats.descriptors)):
        table = Table(title=title)
        table.add_column("name")
        table.add_column("count", justify="right")
        for name, n in counts.most_common():
            table.add_row(escape(name), str(n))
        out.print(table)
    for bad in stats.bad[:20]:
        out.print(escape(f"{path}:{bad.line}: {bad.reason}: {bad.text[:120]!r}"), highlight=False)
