"""The thirdparty NF's config (worker.thirdparty_spec), its health from bridge counters,
and the same schema through the NF config and the controller's chain validator."""

from pathlib import Path

import pytest
import yaml

from quadrant_app.chains import SpecError, parse_chain
from worker.nf_config import parse_config
from worker.nf_errors import NFConfigError
from worker.thirdparty_spec import Health, parse_thirdparty

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "thirdparty"
BASE = {"command": ["nft", "monitor"], "interfaces": {"in": {"name": "eth0"}}}


def cfg(**kw):
    return parse_thirdparty({**BASE, **kw})


def test_defaults_and_one_interface():
    c = cfg()
    assert c.command == ("nft", "monitor") and c.setup == () and c.files == ()
    assert c.one_interface and c.to_nf == c.from_nf and c.to_nf.mac is None
    assert c.behaviour == {"inline"} and not c.may_drop and not c.may_generate
    assert (c.deliver, c.hold_us, c.stall_ms) == ("as_is", 1000, 500)


def test_two_interfaces_behaviour_files():
    c = cfg(interfaces={"in": {"name": "eth0", "mac": "02:AA:00:00:00:01"},
                        "out": {"name": "eth1"}},
            behaviour=["may_drop", "may_generate"], files={"a.nft": "table inet x {}"},
            setup=[["nft", "-f", "a.nft"]], deliver="to_nf_mac")  # fmt: skip
    assert not c.one_interface and c.to_nf.mac == "02:aa:00:00:00:01"
    assert c.may_drop and c.may_generate and c.files == (("a.nft", "table inet x {}"),)
    assert c.setup == (("nft", "-f", "a.nft"),)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"command": None}, "nf.config.command"),
        ({"command": "nft monitor"}, "nf.config.command"),
        ({"command": []}, "nf.config.command"),
        ({"image": "vendor/fw:1"}, "nf.config.image"),
        ({"setup": [["ok"], "sh -c x"]}, "nf.config.setup[1]"),
        ({"files": {"../etc/passwd": "x"}}, "nf.config.files.../etc/passwd"),
        ({"files": {"a": 3}}, "nf.config.files.a"),
        ({"interfaces": {"out": {"name": "eth1"}}}, "nf.config.interfaces.in"),
        ({"interfaces": {"in": {"name": "a-name-too-long-1"}}}, "nf.config.interfaces.in.name"),
        ({"interfaces": {"in": {"name": "lo"}}}, "nf.config.interfaces.in.name"),
        ({"interfaces": {"in": {"name": "e0", "mac": "01:00:5e:00:00:01"}}},
         "nf.config.interfaces.in.mac"),
        ({"interfaces": {"in": {"name": "e0", "ip": "1.2.3.4"}}}, "nf.config.interfaces.in.ip"),
        ({"interfaces": {"in": {"name": "e0", "mac": "02:00:00:00:00:01"},
                         "out": {"name": "e1", "mac": "02:00:00:00:00:01"}}},
         "nf.config.interfaces.out.mac"),
        ({"behaviour": ["inline", "may_drop"]}, "nf.config.behaviour"),
        ({"behaviour": ["sometimes"]}, "nf.config.behaviour"),
        ({"deliver": "rewrite"}, "nf.config.deliver"),
        ({"hold_us": 0}, "nf.config.hold_us"),
        ({"stall_ms": True}, "nf.config.stall_ms"),
        ({"colour": "red"}, "nf.config.colour"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_field(change, field):
    raw = {**BASE, **change}
    if change.get("command", "") is None:
        del raw["command"]
    with pytest.raises(NFConfigError) as e:
        parse_thirdparty(raw)
    assert e.value.field == field


def test_the_examples_parse_and_pass_the_controller():
    for name in ("nft-firewall.yaml", "linux-router.yaml"):
        body = yaml.safe_load((EXAMPLES / name).read_text())
        spec = parse_chain(body)
        kinds = [nf.type for nf in spec.nfs]
        assert kinds[1] == "thirdparty" and kinds[0] != "thirdparty"
        parse_thirdparty(body["nfs"][1]["config"])


def test_controller_refuses_with_the_workers_field_and_reason():
    body = yaml.safe_load((EXAMPLES / "nft-firewall.yaml").read_text())
    body["nfs"][1]["config"]["behaviour"] = "often"
    with pytest.raises(SpecError) as e:
        parse_chain(body)
    assert e.value.field == "nfs[1].config.behaviour"
    # first in the chain (the runtime puts its port stage before it): checked the same way
    body = yaml.safe_load((EXAMPLES / "nft-firewall.yaml").read_text())
    body["nfs"] = [body["nfs"][1], body["nfs"][0]]
    assert [nf.type for nf in parse_chain(body).nfs] == ["thirdparty", "ipforward"]
    body["nfs"][0]["config"]["hold_us"] = 5
    with pytest.raises(SpecError) as e:
        parse_chain(body)
    assert e.value.field == "nfs[0].config.hold_us"


def test_nf_runtime_config_refuses_thirdparty_after_checking_it():
    raw = {"name": "x", "ports": {"rx": {"vdev": "net_null0"}},
           "nf": {"type": "thirdparty", "config": {"command": ["x"]}}}  # fmt: skip
    with pytest.raises(NFConfigError) as e:
        parse_config(raw)
    assert e.value.field == "nf.config.interfaces"
    raw["nf"]["config"] = BASE
    with pytest.raises(NFConfigError, match="only as a chain position") as e:
        parse_config(raw)
    assert e.value.field == "nf.type"


def counters(to_nf, from_nf):
    return {"to_nf": to_nf, "from_nf": from_nf}


def test_health_inline_stall_fails_may_drop_is_silent():
    inline = Health(cfg(stall_ms=100))
    assert inline.update(counters(0, 0), None, 0.0) == "ok"
    assert inline.update(counters(0, 0), None, 5.0) == "ok"  # idle: no input, no stall
    assert inline.update(counters(10, 0), None, 5.05) == "ok"  # input, not long yet
    assert inline.update(counters(20, 0), None, 5.2) == "failed"
    assert "20 frames in, none out for 100 ms" in inline.reason
    assert inline.update(counters(30, 30), None, 6.0) == "failed"  # for good
    fw = Health(cfg(stall_ms=100, behaviour=["may_drop"]))
    fw.update(counters(0, 0), None, 0.0)
    assert fw.update(counters(50, 0), None, 0.2) == "silent"
    assert fw.update(counters(60, 1), None, 0.3) == "ok"


def test_health_output_keeps_it_ok_and_an_exit_fails_it():
    h = Health(cfg(stall_ms=100))
    for k in range(10):
        assert h.update(counters(10 * k, 10 * k), None, k * 1.0) == "ok"
    assert h.update(counters(100, 100), -9, 11.0) == "failed"
    assert h.reason == "its program exited with status -9"
