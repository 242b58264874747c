"""The network-latency profile format: validation and interpolation."""

import json

import pytest

from quadrant_app.latency_profile import FORMAT, ProfileError, load_profile, parse_profile


def doc(points, **extra):
    return {"format": FORMAT, "source": "measured", "points": points, **extra}


def test_interpolates_and_extrapolates_never_below_last():
    p = parse_profile(doc([{"gbps": 0, "p99_us": 10}, {"gbps": 10, "p99_us": 20}]))
    assert p.latency_us(0) == 10
    assert p.latency_us(-1) == 10
    assert p.latency_us(5) == pytest.approx(15)
    assert p.latency_us(20) == pytest.approx(30)  # last slope continues
    down = parse_profile(doc([{"gbps": 0, "p99_us": 10}, {"gbps": 10, "p99_us": 8}]))
    assert down.latency_us(50) == pytest.approx(8)  # a falling tail is not extrapolated
    one = parse_profile(doc([{"gbps": 1, "p99_us": 7}]))
    assert one.latency_us(0) == one.latency_us(9) == 7


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"format": "x", "points": []}, "format"),
        (doc([]), "points"),
        (doc([{"gbps": 1, "p99_us": 2}, {"gbps": 1, "p99_us": 3}]), "points[1].gbps"),
        (doc([{"gbps": 1, "p99_us": -2}]), "points[0].p99_us"),
        (doc([{"gbps": 1}]), "points[0]"),
        (doc([{"gbps": True, "p99_us": 1}]), "points[0].gbps"),
        (doc([{"gbps": 1, "p99_us": 1}], source="guess"), "source"),
        (doc([{"gbps": 1, "p99_us": 1}], packet_bytes=10), "packet_bytes"),
        (doc([{"gbps": 1, "p99_us": 1}], colour="red"), "colour"),
    ],
)
def test_refuses_bad_profiles_naming_the_field(bad, field):
    with pytest.raises(ProfileError) as e:
        parse_profile(bad)
    assert e.value.field == field


def test_load_roundtrip_and_file_errors(tmp_path):
    p = parse_profile(doc([{"gbps": 0, "p99_us": 3.5}, {"gbps": 2, "p99_us": 4.0}], path="veth"))
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p.to_json()))
    assert load_profile(str(f)) == p
    f.write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        load_profile(str(f))
    f.write_text(json.dumps({"format": FORMAT, "points": "x"}))
    with pytest.raises(ProfileError, match=r"p\.json: points"):
        load_profile(str(f))


def test_shipped_profiles_load():
    from tools.sim.profile import NETWORK_DEFAULT

    assert load_profile(NETWORK_DEFAULT).source == "model"
