"""Generate large tables for the basic NFs: ACL rule sets and route files.

    python -m tools.gen_nf_tables acl --count 1500 --seed 1 > acl.txt
    python -m tools.gen_nf_tables routes --count 10000 --seed 1 > routes.txt

ACL rules are ClassBench-like (mixed prefix lengths, service ports and port
ranges, ~30% deny) in the ``rule_file`` format of the ``acl`` NF; routes are
distinct random prefixes with next-hop MACs in the ``route_file`` format of
``ipforward`` and ``bpf_lpm``.  The same seed gives the same file.
"""

from __future__ import annotations

import argparse
import sys

from worker import nf_tables


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("acl", "routes"))
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args(argv)
    if opts.count < 1:
        ap.error("--count must be at least 1")
    if opts.kind == "acl":
        sys.stdout.write("# action src dst proto sport dport\n")
        sys.stdout.write("\n".join(nf_tables.generate_acl_rules(opts.count, opts.seed)) + "\n")
    else:
        sys.stdout.write(nf_tables.format_routes(nf_tables.generate_routes(opts.count, opts.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
