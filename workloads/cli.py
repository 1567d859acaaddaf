"""python3 -m workloads list|run: the workload runner (guest and host alike).

Results (`run --json FILE`) follow schema svmval.workloads/2; workloads/README.md lists
its fields and what changed from /1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from typing import Any

import numpy as np
import pyopencl as cl

from workloads.capabilities import describe, platform_devices, select_device
from workloads.catalog import Env, Workload, all_workloads, execute
from workloads.protocol import RESULT_PREFIX, SCHEMA, result_line

# Tests only: every kernel is built to skip work-item 0, a wrong result each verifier must catch.
SEED_ENV = "SVMVAL_SEED_FAULT"


def _host() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyopencl": ".".join(map(str, cl.VERSION)),
        "numpy": np.__version__,
        "root": os.geteuid() == 0,
    }


def make_env(device: str | None, all_devices: bool, soak_seconds: float, seed_fault: bool = False) -> Env:
    """A context with the selected device, or with every device of its platform."""
    p, d, info = select_device(device)
    devices = platform_devices(p, d) if all_devices else [d]
    infos = [describe(p, dev, i) for i, dev in enumerate(devices)]
    ctx = cl.Context(devices)
    queues = [cl.CommandQueue(ctx, dev) for dev in devices]
    return Env(p, d, infos[0], ctx, queues[0], soak_seconds=soak_seconds, seed_fault=seed_fault,
               devices=devices, infos=infos, queues=queues)


def run(names: list[str], device: str | None, soak_seconds: float, all_devices: bool = False,
        stream: bool = False) -> dict[str, Any]:
    """Run the workloads; with `stream`, each result also goes to stdout as it finishes
    (workloads/protocol.py) so a host keeps it even if this process never ends."""
    CATALOG = all_workloads()
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; `python3 -m workloads list` shows them")
    env: Env | None = None
    env_error = ""
    try:
        env = make_env(device, all_devices, soak_seconds, seed_fault=bool(os.environ.get(SEED_ENV)))
    except (cl.Error, SystemExit) as exc:
        env_error = f"no usable OpenCL device: {exc}"
    results = []
    for name in names or list(CATALOG):
        t0 = time.perf_counter()
        r = execute(CATALOG[name], env, env_error)
        line = f"{r.verdict.upper():5} {name:46} {time.perf_counter() - t0:7.2f}s  {r.reason}"
        print(line, flush=True)
        results.append(r.to_json())
        if stream:
            print(result_line(results[-1]), flush=True)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "host": _host(),
        "mode": "all-devices" if all_devices else "single-device",
        "device": env.info.to_json() if env else {"error": env_error},
        "devices": [i.to_json() for i in env.infos] if env else [],
        "results": results,
    }
    if env and env.seed_fault:
        out["seeded_fault"] = "every kernel skipped work-item 0 (SVMVAL_SEED_FAULT): a test run, not a measurement"
    return out


def cts_rows(catalog: dict[str, Workload]) -> list[tuple[str, str]]:
    """(CTS test, workload) in CTS order of appearance in the catalog."""
    return [(t, wl.name) for wl in catalog.values() for t in wl.cts]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python3 -m workloads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="the catalog")
    ls.add_argument("--names", action="store_true", help="names only, one per line")
    ls.add_argument("--cts", action="store_true", help="OpenCL-CTS test -> workload, one per line")
    rn = sub.add_parser("run", help="run workloads (all by default)")
    rn.add_argument("names", nargs="*")
    rn.add_argument("--json", dest="json_path", help="write results here")
    rn.add_argument("--device", help="PLATFORM:DEVICE indices or a device-name substring")
    rn.add_argument("--devices", choices=["one", "all"], default="one",
                    help="all: one context with every device of the selected device's platform; the "
                         "cross-device workloads then run on each (default: the selected device alone)")
    rn.add_argument("--soak-seconds", type=float, default=2.0)
    rn.add_argument("--stream", action="store_true",
                    help=f"also print each result as a '{RESULT_PREFIX.strip()} {{json}}' line as it finishes")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        catalog = all_workloads()
        if args.cts:
            for test, name in cts_rows(catalog):
                print(f"{test:46} {name}")
            return
        for wl in catalog.values():
            if args.names:
                print(wl.name)
            else:
                needs = ", ".join(str(n.name).lower() for n in wl.needs) or "-"
                cts = "-" if not wl.cts else "(same name)" if wl.cts == (wl.name,) else ",".join(wl.cts)
                print(f"{wl.name:46} {wl.category:36} needs: {needs:40} cts: {cts}")
        return
    out = run(args.names, args.device, args.soak_seconds, all_devices=args.devices == "all", stream=args.stream)
    if args.json_path:
        with open(args.json_path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(args.json_path + ".tmp", args.json_path)
    sys.exit(1 if any(r["verdict"] == "fail" for r in out["results"]) else 0)
