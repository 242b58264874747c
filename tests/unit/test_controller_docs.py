"""docs/controller.rst names every option and every metric the controller has."""

from __future__ import annotations

from pathlib import Path

from quadrant_app import config
from quadrant_app.metrics import Metrics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "controller.rst").read_text()


def test_every_option_is_documented():
    for opt in config.OPTS:
        assert f"``{opt.name}``" in DOC, opt.name


def test_every_metric_is_documented():
    for metric in Metrics().all():
        assert f"``{metric.name}" in DOC, metric.name


def test_options_register_on_osken_conf():
    from os_ken import cfg as osken_cfg

    opts = config.options(osken_cfg.CONF)
    assert opts.idle_timeout == 10 and opts.gc_thresholds == [50000, 50, 1000]
    settings = config.settings(opts)
    assert settings.hold_queue_len == opts.hold_queue_len
