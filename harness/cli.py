"""`svmval` command line."""

from __future__ import annotations

import sys

import click
from rich.console import Console
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
            name,
            h.kind.value,
            "-" if h.is_local else f"{h.user}@{h.address}:{h.port}",
            h.device or "-",
            h.nesting.value,
            f"{h.guest_cpus} CPUs, {h.guest_memory_mib} MiB",
        )
    console.print(table)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except SvmvalError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
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
