"""`svmval image build|info`."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from guest_image.build import cached_image, ensure_image, images_dir, recipe_digest

console = Console()


@click.group()
def image() -> None:
    """The guest image, built offline from Debian packages and cached by content."""


@image.command()
@click.option("--force", is_flag=True, help="rebuild even when the cache has this recipe's image")
def build(force: bool) -> None:
    """Build (or reuse) the guest image."""
    with console.status("building the guest image") as status:
        img = ensure_image(lambda msg: (status.update(msg), console.log(msg)), force=force)
    console.print(f"image {img.digest[:12]} at {img.dir}")


@image.command()
def info() -> None:
    """Show the image for the current recipe: digest, sizes, package versions."""
    img = cached_image()
    table = Table(title="guest image")
    table.add_column("field")
    table.add_column("value")
    table.add_row("recipe digest", recipe_digest())
    table.add_row("cache", str(images_dir()))
    if img is None:
        table.add_row("status", "not built: `svmval image build` (or any run) builds it")
        console.print(table)
        return
    m = img.manifest
    table.add_row("status", f"cached at {img.dir}")
    table.add_row("suite / kernel", f"{m['suite']} / {m['kernel']}")
    table.add_row("cmdline", img.cmdline)
    for name, size in m["sizes"].items():
        table.add_row(f"size {name}", f"{size / 2**20:.1f} MiB")
    table.add_row("built", f"{m['built']} in {m['build_s']} s")
    for pkg, ver in sorted(m["packages"].items()):
        table.add_row(pkg, ver)
    console.print(table)
