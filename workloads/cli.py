"""python3 -m workloads list|run: the workload runner (guest and host alike)."""

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

from workloads.capabilities import select_device
from workloads.catalog import Env, all_workloads, execute

SCHEMA = "svmval.workloads/1"


def _host() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyopencl": ".".join(map(str, cl.VERSION)),
        "numpy": np.__version__,
        "root": os.geteuid() == 0,
    }


def run(names: list[str], device: str | None, soak_seconds: float) -> dict[str, Any]:
    CATALOG = all_workloads()
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; `python3 -m workloads list` shows them")
    env: Env | None = None
    env_error = ""
    try:
        p, d, info = select_device(device)
        ctx = cl.Context([d])
        env = Env(p, d, info, ctx, cl.CommandQueue(ctx), soak_seconds=soak_seconds)
    except (cl.Error, SystemExit) as exc:
        env_error = f"no usable OpenCL device: {exc}"
    results = []
    for name in names or list(CATALOG):
        t0 = time.perf_counter()
        r = execute(CATALOG[name], env, env_error)
        line = f"{r.verdict.upper():5} {name:32} {time.perf_counter() - t0:7.2f}s  {r.reason}"
        print(line, flush=True)
        results.append(r.to_json())
    return {
        "schema": SCHEMA,
        "host": _host(),
        "device": env.info.to_json() if env else {"error": env_error},
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python3 -m workloads", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="the catalog")
    ls.add_argument("--names", action="store_true", help="names only, one per line")
    rn = sub.add_parser("run", help="run workloads (all by default)")
    rn.add_argument("names", nargs="*")
    rn.add_argument("--json", dest="json_path", help="write results here")
    rn.add_argument("--device", help="PLATFORM:DEVICE indices or a device-name substring")
    rn.add_argument("--soak-seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for wl in all_workloads().values():
            if args.names:
                print(wl.name)
            else:
                needs = ", ".join(str(n.name).lower() for n in wl.needs) or "-"
                print(f"{wl.name:32} {wl.category:40} needs: {needs}")
        return
    out = run(args.names, args.device, args.soak_seconds)
    if args.json_path:
        with open(args.json_path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(args.json_path + ".tmp", args.json_path)
    sys.exit(1 if any(r["verdict"] == "fail" for r in out["results"]) else 0)
