"""Every option the controller reads, declared, typed and documented here.

Options live in the ``[quadrant]`` group of the file given to
``osken-manager --config-file``.  os-ken keeps its own ``ConfigOpts``
instance (``os_ken.cfg.CONF``, not oslo.config's global), so that is the
one the options are registered on.
"""

from __future__ import annotations

from os_ken import cfg as osken_cfg
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


def register(conf: cfg.ConfigOpts = osken_cfg.CONF) -> cfg.ConfigOpts:
    """Register the options (idempotent) and return the conf object."""
    conf.register_opts(OPTS, group=GROUP)
    return conf


def options(conf: cfg.ConfigOpts = osken_cfg.CONF):
    """The ``[quadrant]`` option group, registered if it was not yet."""
    register(conf)
    return conf[GROUP]
