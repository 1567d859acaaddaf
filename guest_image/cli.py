"""`svmval image build|info` (registered by harness/cli.py)."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from guest_image import recipe
from guest_image.build import (
    IMAGE_FILES,
    cached_image,
    current_resolution,
    ensure_image,
    images_dir,
    recipe_digest,
)

console = Console()


@click.group()
def image() -> None:
    """The guest image, built offline from Debian packages and cached by content."""


@image.command()
@click.option("--force", is_flag=True, help="rebuild even when the cache holds this digest's image")
def build(force: bool) -> None:
    """Build (or reuse) the guest image for the current recipe and package versions."""
    t0 = time.monotonic()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("resolving package versions", total=None)

        def say(msg: str) -> None:
            progress.update(task, description=escape(msg))
            progress.console.log(escape(msg))

        img = ensure_image(say, force=force)
    console.print(
        f"image [bold]{img.digest[:12]}[/] at {escape(str(img.dir))} "
        f"(kernel {img.manifest['kernel']}, {time.monotonic() - t0:.1f} s)"
    )


@image.command()
def info() -> None:
    """Digest, path, sizes and package versions of the image for the current recipe."""
    resolution = current_resolution(lambda msg: console.log(escape(msg)))
    digest = recipe_digest(resolution)
    d = images_dir() / digest
    table = Table(title="guest image", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("digest", digest)
    table.add_row("path", str(d))
    suffix = " (mirror unreachable: last known)" if resolution.offline else ""
    table.add_row("suite", f"{recipe.SUITE} of {resolution.release_date}{suffix}")
    if not (d / "manifest.json").exists():
        table.add_row("cached", "no: `svmval image build` (or any run) builds it")
        for pkg in ("linux-image-amd64", "python3", "python3-pyopencl", "pocl-opencl-icd"):
            table.add_row(pkg, resolution.versions.get(pkg, "?") + " (resolved)")
        console.print(table)
        return
    img = cached_image()
    assert img is not None  # the manifest exists: it is this digest's image
    m = img.manifest
    table.add_row("cached", f"yes, built {m['built']} in {m['build_s']} s")
    table.add_row("kernel", m["kernel"])
    table.add_row("cmdline", img.cmdline)
    for name in IMAGE_FILES:
        size, alloc = m["sizes"][name], m.get("allocated", {}).get(name, m["sizes"][name])
        table.add_row(f"size {name}", f"{size / 2**20:.1f} MiB ({alloc / 2**20:.1f} MiB on disk)")
    table.add_row("ssh key / host key", f"{img.ssh_key} / {img.host_key_pub}")
    for pkg, ver in sorted(m["packages"].items()):
        table.add_row(pkg, ver)
    console.print(table)
