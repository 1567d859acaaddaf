"""`svmval` command line."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import SvmvalError
from harness.inventory import load_inventory

console = Console()


@click.group()
@click.option(
    "--inventory",
    envvar="SVMVAL_INVENTORY",
    type=click.Path(dir_okay=False),
    help="lab inventory TOML (default: labs.toml at the repo root)",
)
@click.pass_context
def cli(ctx: click.Context, inventory: str | None) -> None:
    """Validate OpenCL 2.0 SVM under a virtual Intel VT-d IOMMU."""
    ctx.ensure_object(dict)
    ctx.obj["inventory"] = inventory


@cli.command()
@click.pass_context
def hosts(ctx: click.Context) -> None:
    """List the lab hosts in the inventory."""
    inv = load_inventory(ctx.obj["inventory"])
    table = Table(title=f"lab hosts ({inv.source or 'built-in only'})")
    for col in ("name", "kind", "address", "device", "nesting", "guest"):
        table.add_column(col)
    for name in inv.names():
        h = inv.hosts[name]
        table.add_row(
            escape(name),
            h.kind.value,
            "-" if h.is_local else escape(f"{h.user}@{h.address}:{h.port}"),
            escape(h.device or "-"),
            h.nesting.value,
            f"{h.guest_cpus} CPUs, {h.guest_memory_mib} MiB",
        )
    console.print(table)


@cli.command()
@click.option("--host", "host_name", default="local", show_default=True)
@click.pass_context
def preflight(ctx: click.Context, host_name: str) -> None:
    """Check that HOST can run svmval: a verdict per line, the fix for each failure."""
    from harness.preflight import render_verdicts, run_local_preflight

    host = load_inventory(ctx.obj["inventory"]).get(host_name)
    if host.is_local:
        verdicts = run_local_preflight(host.qemu)
    else:
        from harness.remote import SshTarget
        from host_setup.preflight import run_preflight

        with SshTarget(host) as target:
            verdicts = run_preflight(target, host)
    console.print(render_verdicts(verdicts, f"preflight: {host_name}"))
    ctx.exit(1 if any(v.failed for v in verdicts) else 0)


@cli.command("run")
@click.option("--host", "host_name", default="local", show_default=True)
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(file_okay=False))
@click.option("--workload", "workloads", multiple=True, help="run only these workloads (repeatable)")
@click.option("--seed-bug", "seed_name", metavar="NAME",
              help="plant a known bug the checks must catch (`--seed-bug help` lists them)")
@click.pass_context
def run_cmd(ctx: click.Context, host_name: str, artifacts: str, workloads: tuple[str, ...],
            seed_name: str | None) -> None:
    """The end-to-end run: image, boot, workloads in the guest, checks, report."""
    from pathlib import Path

    from harness.run import run
    from harness.seeds import SEED_BUGS, seed_bug

    if seed_name == "help":
        for bug in SEED_BUGS.values():
            console.print(escape(f"{bug.name}: {bug.what}; must fail: {bug.fails}"), highlight=False)
        return
    seed = seed_bug(seed_name) if seed_name else None
    if seed is not None and not workloads:
        workloads = seed.workloads
    host = load_inventory(ctx.obj["inventory"]).get(host_name)
    with console.status("starting") as status:
        outcome = run(
            host, Path(artifacts), workloads=list(workloads) or None,
            say=lambda msg: _progress(status, msg), seed=seed,
        )
    console.print(summary_table(outcome))
    files = outcome.bundle.manifest.files
    for role in ("report", "junit"):
        if role in files:
            console.print(escape(f"{role}: {outcome.bundle.path / files[role]}"))
    mf = outcome.bundle.manifest
    if mf.error:
        console.print(f"[bold red]run could not complete:[/] {escape(mf.error)}", highlight=False)
    console.print(f"verdict: [bold]{mf.verdict.value.upper()}[/] in {mf.durations.get('total_s', 0)} s "
                  f"(bundle {escape(str(outcome.bundle.path))})")
    ctx.exit(0 if outcome.ok else 1)


@cli.command()
@click.option("--host", "host_name", required=True)
@click.pass_context
def restore(ctx: click.Context, host_name: str) -> None:
    """Put a lab host back (device driver, hugepages, QEMU, lock) from the journal a run
    that died left there."""
    from harness.remote import SshTarget
    from host_setup.provision import restore_host

    host = load_inventory(ctx.obj["inventory"]).get(host_name)
    if host.is_local:
        raise click.UsageError("the local lab changes nothing on this machine: there is nothing to restore")
    with SshTarget(host) as target:
        done = restore_host(target, host)
    console.print(escape(f"{host_name}: " + (", ".join(done) if done else "nothing to restore (no lock, no journal)")))


def _progress(status: Any, msg: str) -> None:
    status.update(escape(msg))
    console.log(escape(msg))


def summary_table(outcome: Any) -> Table:
    table = Table(title=f"svmval run {outcome.bundle.manifest.run_id}")
    for col in ("kind", "name", "verdict", "traffic", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "bold red"}
    for r in (outcome.workloads or {}).get("results", []):
        v = r["verdict"]
        table.add_row("workload", escape(r["name"]), f"[{colour[v]}]{v}[/]", "-", escape(r.get("reason") or ""))
    for c in outcome.checks:
        v = c.verdict.value
        name = f"{c.name} ({c.workload})" if c.workload else c.name
        table.add_row("check", escape(name), f"[{colour[v]}]{v}[/]", c.traffic.value, escape(c.summary))
    return table


def _register() -> None:
    from guest_image.cli import image
    from harness.qemu.cli import boot, qemu, trace
    from reports.cli import report

    for command in (image, boot, qemu, trace, report):
        cli.add_command(command)


_register()


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM (CI timeouts, kill) unwinds like ctrl-C: VMs are shut down, artefacts kept.
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        rv = cli(standalone_mode=False)
        if isinstance(rv, int):
            sys.exit(rv)
    except SvmvalError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
