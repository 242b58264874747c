"""``quadrant-lab up|down|status TOPOLOGY``: the lab-in-a-box from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from quadrant_app.topology import TopologyError, load
from tools.lab.lab import Lab, LabError
from tools.lab.lease import LeaseBusy
from tools.lab.ovs import OvsError
from tools.lab.plan import PlanError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="quadrant-lab",
        description="Build a topology file on this machine with a private userspace Open vSwitch, "
        "network namespaces, veth links and macvlan VFs; take it down again.",
    )
    ap.add_argument("command", choices=("up", "down", "status"))
    ap.add_argument("topology", help="topology file, e.g. topologies/lab.yaml")
    ap.add_argument(
        "--prefix", default="q", help="prefix of every name the lab makes (1-4 chars; default q)"
    )
    ap.add_argument(
        "--rundir", help="run directory (default /run/quadrant-lab/PREFIX-NAME); OVS lives in it"
    )
    ap.add_argument(
        "--controller", help="controller target for every switch, overriding the file's"
    )
    ap.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="with up: seconds to wait for another lab on this machine to finish (default 0)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="quadrant-lab: %(message)s")
    try:
        lab = Lab(load(args.topology), args.prefix, args.rundir, args.controller)
        if args.command == "up":
            lab.up(wait=args.wait)
            st = lab.status()
            print(f"lab up: run directory {lab.rundir}")
            for name, info in st["bridges"].items():
                print(f"  bridge {name} -> controller {info.get('controller')}")
            for ns in st["namespaces"]:
                print(f"  netns {ns}")
            print(f"  {len(st['vfs'])} VFs (macvlan), {len(st['links'])} links")
            hp = st["hugepages"]
            print(
                f"  hugepages: {hp['reserved_2mb']} x 2 MB, hugetlbfs "
                f"{'mounted' if hp['hugetlbfs_mounted'] else 'not mounted (DPDK uses --no-huge)'}"
            )
        elif args.command == "down":
            removed = lab.down()
            print("lab down: removed " + (", ".join(removed) if removed else "nothing (none left)"))
        else:
            print(json.dumps(lab.status(), indent=2))
    except (TopologyError, PlanError, LabError, OvsError, LeaseBusy) as exc:
        print(f"quadrant-lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
