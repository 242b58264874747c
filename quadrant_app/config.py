"""Every option the controller reads, declared, typed and documented here.

Options live in the ``[quadrant]`` group of the file given to
``osken-manager --config-file`` (or as ``--quadrant-<name>`` flags).
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "quadrant"

OPTS = [
    cfg.StrOpt(
        "topology",
        required=True,
        help="Topology file (YAML) naming the switches, workers and lab hosts; "
        "see docs/topology.rst.",
    ),
]


def register(conf: cfg.ConfigOpts = cfg.CONF) -> cfg.ConfigOpts:
    """Register the options (idempotent) and return the conf object."""
    conf.register_opts(OPTS, group=GROUP)
    conf.register_cli_opts([], group=GROUP)
    return conf


def options(conf: cfg.ConfigOpts = cfg.CONF):
    """The ``[quadrant]`` option group, registered if it was not yet."""
    register(conf)
    return conf[GROUP]
