"""Every option the controller reads, declared, typed and documented here.

Options live in the ``[quadrant]`` group of the file given to
``osken-manager --config-file``.  os-ken keeps its own ``ConfigOpts``
instance (``os_ken.cfg.CONF``, not oslo.config's global), so that is the
one the options are registered on.  docs/controller.rst lists them.
"""

from __future__ import annotations

from os_ken import cfg as osken_cfg
from oslo_config import cfg

from quadrant_app.chains import DEFAULT_NF_TYPES

GROUP = "quadrant"

OPTS = [
    cfg.StrOpt(
        "topology",
        required=True,
        help="Topology file (YAML) naming the switches, workers and lab hosts; "
        "see docs/topology.rst.",
    ),
    cfg.BoolOpt("rest_enabled", default=True, help="Serve the northbound REST API."),
    cfg.HostAddressOpt("rest_host", default="127.0.0.1", help="Address the REST API listens on."),
    cfg.PortOpt("rest_port", default=8080, help="TCP port of the REST API."),
    cfg.StrOpt(
        "tokens_file",
        help="YAML file of bearer tokens: tenants and admins (see docs/controller.rst).  "
        "Without it the REST API is not served (a warning says so).",
    ),
    cfg.IntOpt(
        "max_body_bytes",
        default=65536,
        min=1024,
        help="Largest REST request body accepted; larger ones get 413.",
    ),
    cfg.IntOpt(
        "max_page",
        default=1000,
        min=1,
        help="Largest page (limit) GET /v1/flows returns.",
    ),
    cfg.IntOpt(
        "idle_timeout",
        default=10,
        min=1,
        max=65535,
        help="Idle timeout (s) of per-flow rules; the switch then removes the rule and "
        "tells the controller (flow-removed).",
    ),
    cfg.IntOpt(
        "hold_queue_len",
        default=1024,
        min=0,
        help="Per chain: packets of new flows held while the chain has no instance to "
        "take them.  When full, further such packets are dropped (and counted).",
    ),
    cfg.FloatOpt(
        "hold_timeout",
        default=2.0,
        min=0.0,
        help="Held packets older than this (s) are dropped (and counted).",
    ),
    cfg.FloatOpt(
        "flow_stats_interval",
        default=10.0,
        min=0.0,
        help="Seconds between flow-stats requests (per-flow rates, default counters); "
        "0 turns polling off.",
    ),
    cfg.FloatOpt(
        "reinstall_after",
        default=1.0,
        min=0.0,
        help="A packet-in of an assigned flow older than this (s) means its rule went "
        "missing: install it again (younger: the rule is on its way, only packet-out).",
    ),
    cfg.BoolOpt(
        "ordered_release",
        default=True,
        help="When a chain that had no instance gets one, release the flows it held "
        "through the instance's hold, so none of their packets is reordered "
        "(docs/reliability.rst, Held packets); false: send them plainly.",
    ),
    cfg.FloatOpt(
        "release_quiet_s",
        default=0.1,
        min=0.0,
        help="Ordered release: the held flows go to their instance once none of them has "
        "come to the controller for this long since their rules were in place (the "
        "switch's cached flows send a few after its barrier reply).",
    ),
    cfg.FloatOpt(
        "release_wait_s",
        default=0.6,
        min=0.0,
        help="Ordered release: the longest the instance holds the flows (s), from the hold "
        "on; below the instance's own hold limit (1 s).",
    ),
    cfg.FloatOpt(
        "tick_interval",
        default=0.5,
        min=0.05,
        help="Seconds between the core's periodic work (hold expiry, stats polling).",
    ),
    cfg.BoolOpt(
        "gc_freeze",
        default=True,
        help="After start-up, move every object so far (os-ken, modules, topology) to "
        "the garbage collector's permanent generation, so collections never rescan them.",
    ),
    cfg.ListOpt(
        "gc_thresholds",
        default=["50000", "50", "1000"],
        item_type=int,
        help="gc.set_threshold() for the controller process.  The flow table holds a few "
        "long-lived objects per flow; with CPython's defaults (700, 10, 10) the collector "
        "rescans them so often that it doubles the cost of a flow setup "
        "(docs/benchmarks.rst).  Empty: keep Python's defaults.",
    ),
    cfg.BoolOpt(
        "agents_enabled",
        default=True,
        help="Serve the agents' WebSocket endpoint /v1/agents on the REST server (needs "
        "tokens_file with worker entries) and orchestrate chain instances on the workers.",
    ),
    cfg.FloatOpt(
        "heartbeat_s",
        default=1.0,
        min=0.05,
        help="Seconds between an agent's heartbeats (told to the agent on register); a worker "
        "whose agent misses three is lapsed.",
    ),
    cfg.IntOpt(
        "warm_pool",
        default=1,
        min=0,
        help="Detached (prepared, not yet attached) instances to keep per chain.",
    ),
    cfg.IntOpt(
        "default_batch",
        default=32,
        min=1,
        max=256,
        help="Batch size a new instance is prepared with.",
    ),
    cfg.FloatOpt(
        "agent_call_timeout",
        default=10.0,
        min=0.1,
        help="Seconds to wait for an agent's answer to attach, detach, set_batch, teardown.",
    ),
    cfg.FloatOpt(
        "prepare_timeout",
        default=90.0,
        min=1.0,
        help="Seconds to wait for an agent to prepare an instance (NF processes start, "
        "each brings up its DPDK EAL).",
    ),
    cfg.StrOpt(
        "scaling_policy",
        default="quadrant",
        choices=["quadrant", "metron", "off"],
        help="The scaling loop (needs agents): quadrant (SLO-aware, the paper's), metron "
        "(load > 80 %, power-of-two choices; for comparison) or off (no migration, "
        "scale-out only when a new flow finds no candidate, no reclaim).",
    ),
    cfg.FloatOpt(
        "scaling_interval",
        default=1.0,
        min=0.05,
        help="Seconds between two scaling rounds.  Flow rates come from flow stats, so "
        "keep flow_stats_interval no longer than this for migration to see them.",
    ),
    cfg.StrOpt(
        "latency_profile",
        help="Network latency profile (JSON, quadrant-network-profile/1; made by "
        "tools/profile_network.py): its p99 at the worker's throughput is added to "
        "2 x p99 per-batch time in the latency estimate.  None: no network term.",
    ),
    cfg.FloatOpt(
        "reclaim_grace",
        default=5.0,
        min=0.0,
        help="Seconds an instance attached by the scaling loop may go without flows "
        "before it is reclaimed.",
    ),
    cfg.BoolOpt(
        "scaling_rate_adapt",
        default=True,
        help="Eq. 4 with its rate-adapting term (the paper's default); false drops it.",
    ),
    cfg.FloatOpt(
        "drain_timeout",
        default=0.5,
        min=0.001,
        help="Longest wait (s), when flows move, for the old instance to emit what it "
        "had of them; the new instance holds their packets meanwhile.",
    ),
    cfg.StrOpt(
        "state_redis",
        secret=True,
        help="Redis URL (redis://USER:PASSWORD@HOST:PORT/DB) where the controller keeps "
        "its chains and instances, so that a restarted controller carries on "
        "(docs/reliability.rst).  None: nothing survives a restart.",
    ),
    cfg.StrOpt(
        "state_prefix",
        help="Key prefix of the controller's books in state_redis (default "
        "quadrant:controller:<topology name>).",
    ),
    cfg.ListOpt(
        "nf_types",
        default=list(DEFAULT_NF_TYPES),
        help="NF types a chain may name (the data plane's NFs).",
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


def scaling_settings(opts):
    """The autoscaler's :class:`~quadrant_app.autoscale.Settings` from the option group."""
    from quadrant_app import autoscale
    from quadrant_app.latency_profile import load_profile

    network = load_profile(opts.latency_profile) if opts.latency_profile else autoscale.NO_NETWORK
    return autoscale.Settings(
        policy=opts.scaling_policy,
        interval=opts.scaling_interval,
        pool_size=opts.warm_pool,
        reclaim_grace=opts.reclaim_grace,
        batch=opts.default_batch,
        rate_adapt=opts.scaling_rate_adapt,
        network=network,
    )


def settings(opts):
    """The core's :class:`~quadrant_app.core.Settings` from the option group."""
    from quadrant_app.core import Settings

    return Settings(
        idle_timeout=opts.idle_timeout,
        hold_queue_len=opts.hold_queue_len,
        hold_timeout=opts.hold_timeout,
        flow_stats_interval=opts.flow_stats_interval,
        reinstall_after=opts.reinstall_after,
        ordered_release=opts.ordered_release,
        nf_types=tuple(opts.nf_types),
    )
