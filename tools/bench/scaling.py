"""Scaling benchmark (Figure 5/4 shapes): ``python -m tools.bench.scaling [--quick] [--json P]``.

The same as ``python -m tools.sim bench``; see docs/benchmarks.rst.
"""

import sys

from tools.sim.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
