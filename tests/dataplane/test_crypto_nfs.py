"""encrypt and decrypt through the real runtime on net_pcap files.

Round trips over every payload size, checksums checked by scapy, the wire
format checked against an independent implementation (tests/dataplane/
xchacha_ref.py: OpenSSL's ChaCha20 and a HChaCha20 written from the draft),
nonces unique across flows and runtime restarts, tampering detected, bad
keys refused, malformed frames survived.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from scapy.all import IP, TCP, UDP, Ether, IPv6, IPv6ExtHdrHopByHop, Raw, raw

from tests.dataplane.conftest import nf_config, run_config
from tests.dataplane.packets import eth, icmp, malformed, non_ip
from tests.dataplane.xchacha_ref import open_aead, xor_stream
from worker.nf_crypto import MODES, NONCE_BYTES, SALT_BYTES

KEY = bytes(range(0x40, 0x60))
KEY_HEX = KEY.hex()
MTU = 1500


def udp_pkt(n: int, sport: int = 4000, **kw) -> bytes:
    pl = bytes((i * 7 + n) & 0xFF for i in range(n))
    return raw(eth() / IP(src="10.1.0.1", dst="10.2.0.1", **kw) / UDP(sport=sport, dport=7777) / pl)


def tcp_pkt(n: int, sport: int = 5000, flags="PA", options=(), **kw) -> bytes:
    pl = bytes((i * 13 + n) & 0xFF for i in range(n))
    tcp = TCP(sport=sport, dport=80, seq=1000 + n, flags=flags, options=list(options))
    return raw(eth() / IP(src="10.1.0.1", dst="10.2.0.1", **kw) / tcp / pl)


def l4_payload(frame: bytes) -> bytes:
    p = Ether(frame)
    l4 = (p[IP] if IP in p else p[IPv6]).payload
    return bytes(l4.payload) if isinstance(l4, TCP | UDP) else b""


def checksums_valid(frame: bytes) -> bool:
    pkt = Ether(frame)
    again = pkt.copy()
    if IP in again:
        del again[IP].chksum
        del again[IP].len
    else:
        del again[IPv6].plen
    l4 = l3(again).payload
    del l4.chksum
    if isinstance(l4, UDP):
        del l4.len
        if pkt[UDP].chksum == 0:  # no checksum: nothing to check
            l4.chksum = 0
    return raw(Ether(raw(again))) == frame


def l3(pkt):
    return pkt[IP] if IP in pkt else pkt[IPv6]


def headers_equal_but_lengths(a: bytes, b: bytes) -> bool:
    """Same Ethernet/IPv4/L4 headers, ignoring IP len/chksum and L4 len/chksum."""
    pa, pb = Ether(a), Ether(b)
    for p in (pa, pb):
        if IP in p:
            p[IP].len = p[IP].chksum = 0
        else:
            p[IPv6].plen = 0
        l4 = l3(p).payload
        l4.chksum = 0
        if isinstance(l4, UDP):
            l4.len = 0
        l4.remove_payload()
    return raw(pa) == raw(pb)


def crypto_nf(kind: str, **config) -> dict:
    return {"type": kind, "config": {"key": KEY_HEX, **config}}


def nonces(frames: list[bytes], mode: str = "aead") -> list[bytes]:
    t = MODES[mode]
    out = []
    for f in frames:
        pl = l4_payload(f)
        if pl:
            out.append(pl[len(pl) - t : len(pl) - t + NONCE_BYTES])
    return out


@pytest.mark.parametrize("mode", ["aead", "stream"])
def test_round_trip_every_payload_size(run_nf, mode):
    sizes_udp = range(0, MTU - 20 - 8 + 1)  # up to the MTU payload: 1472
    sizes_tcp = range(0, MTU - 20 - 20 + 1)  # 1460
    frames = [udp_pkt(n) for n in sizes_udp] + [tcp_pkt(n) for n in sizes_tcp]
    enc = run_nf(crypto_nf("encrypt", mode=mode), frames)
    t = MODES[mode]
    udp_max, tcp_max = MTU - 28 - t, MTU - 40 - t  # the largest payloads that still fit
    fits = frames[: udp_max + 1] + frames[len(sizes_udp) : len(sizes_udp) + tcp_max + 1]
    st = enc.summary["nf_stats"]
    assert st["too_big"] == len(frames) - len(fits) == (1472 - udp_max) + (1460 - tcp_max)
    assert st["empty"] == 2 and st["encrypted"] == len(fits) - 2
    assert len(enc.output) == len(fits)
    for i, (before, after) in enumerate(zip(fits, enc.output, strict=True)):
        hdr = 42 if before[23] == 17 else 54  # Ethernet + IPv4 + UDP / TCP without options
        plain, sealed = before[hdr:], after[hdr:]
        # scapy checks every frame in aead mode; stream mode shares the code: a sample
        if mode == "aead" or i % 8 == 0 or len(plain) > udp_max - 8:
            assert checksums_valid(after), Ether(after).summary()
        # every header byte but the IPv4 length/checksum and the L4 length/checksum
        keep = [(0, 16), (18, 24), (26, 38)] + ([(40, 50), (52, 54)] if hdr == 54 else [])
        assert all(before[a:b] == after[a:b] for a, b in keep)
        if not plain:
            assert after == before  # nothing to encrypt: untouched
            continue
        assert len(sealed) == len(plain) + t and len(after) == len(before) + t
        # a keystream byte is 0 once in 256: a short body may equal its plaintext (one
        # byte did in a CI run); from 8 bytes on that is a 2**-64 chance.  The decryption
        # below checks every body, short ones included.
        if len(plain) >= 8:
            assert sealed[: len(plain)] != plain
        body, nonce = sealed[: len(plain)], sealed[len(plain) : len(plain) + NONCE_BYTES]
        if mode == "aead":
            assert open_aead(KEY, nonce, body, sealed[len(plain) + NONCE_BYTES :]) == plain
        else:
            assert xor_stream(KEY, nonce, body) == plain
    # one salt per run, the counter counts the packets in order from 0
    ns = [f[len(f) - t : len(f) - t + NONCE_BYTES] for f in enc.output if len(f) not in (42, 54)]
    assert len({n[:SALT_BYTES] for n in ns}) == 1
    assert [int.from_bytes(n[SALT_BYTES:], "big") for n in ns] == list(range(len(ns)))

    dec = run_nf(crypto_nf("decrypt", mode=mode), enc.output)
    assert dec.output == fits  # byte for byte
    assert dec.summary["nf_stats"]["decrypted"] == len(fits) - 2


def test_jumbo_mtu_takes_full_size_frames(run_nf):
    frames = [udp_pkt(1472), tcp_pkt(1460)]
    enc = run_nf(crypto_nf("encrypt", mtu=MTU + 40), frames)
    assert [len(f) for f in enc.output] == [1514 + 40, 1514 + 40]
    assert all(checksums_valid(f) for f in enc.output)
    assert run_nf(crypto_nf("decrypt"), enc.output).output == frames


def test_no_nonce_reuse_across_flows_and_restarts(run_nf):
    # 64 flows x 8 packets, twice the same input through two runtime starts
    frames = [udp_pkt(32 + k, sport=1000 + f) for k in range(8) for f in range(64)]
    frames += [tcp_pkt(100, sport=2000 + f) for f in range(64)]
    runs = [run_nf(crypto_nf("encrypt"), frames) for _ in range(2)]
    all_nonces = [n for r in runs for n in nonces(r.output)]
    assert len(all_nonces) == 2 * len(frames)
    assert len(set(all_nonces)) == len(all_nonces)
    assert len({n[:SALT_BYTES] for n in all_nonces}) == 2  # a fresh salt per start
    # same key, same plaintext, other nonce: other ciphertext
    for a, b in zip(runs[0].output, runs[1].output, strict=True):
        assert l4_payload(a) != l4_payload(b)
    # one decrypt takes both senders' packets, interleaved: a subkey per salt change
    mixed = [f for pair in zip(runs[0].output[:8], runs[1].output[:8], strict=True) for f in pair]
    dec = run_nf(crypto_nf("decrypt"), runs[0].output + runs[1].output + mixed)
    assert dec.output == frames + frames + [f for f in frames[:8] for _ in range(2)]
    assert dec.summary["nf_stats"]["salts_seen"] == 2 + 16


def test_tampering_and_wrong_key_are_dropped(run_nf):
    frames = [udp_pkt(n) for n in (1, 17, 200)] + [tcp_pkt(n) for n in (1, 64, 999)]
    enc = run_nf(crypto_nf("encrypt"), frames).output
    forged = []
    for i, f in enumerate(enc):
        b = bytearray(f)
        # flip one bit in the ciphertext, the nonce or the tag (checksums not fixed
        # up: decrypt does not look at them, the tag decides)
        pos = [len(b) - 40 - 1, len(b) - 30, len(b) - 1][i % 3]
        b[pos] ^= 0x10
        forged.append(bytes(b))
    dec = run_nf(crypto_nf("decrypt"), forged + enc)
    assert dec.output == frames
    assert dec.summary["nf_stats"]["auth_failed"] == len(forged)
    other_key = run_nf({"type": "decrypt", "config": {"key": "ab" * 32}}, enc)
    assert other_key.output == []
    assert other_key.summary["nf_stats"]["auth_failed"] == len(enc)
    # stream mode has no tag: a flipped ciphertext bit flips the plaintext bit
    enc_s = run_nf(crypto_nf("encrypt", mode="stream"), frames[:1]).output[0]
    b = bytearray(enc_s)
    b[len(b) - 24 - 1] ^= 0x01
    out = run_nf(crypto_nf("decrypt", mode="stream"), [bytes(b)]).output[0]
    assert l4_payload(out) == bytes([l4_payload(frames[0])[0] ^ 0x01])
    with pytest.raises(InvalidTag):  # and the reference agrees a forged tag is caught
        pl = l4_payload(forged[2])
        open_aead(KEY, pl[-40:-16], pl[:-40], pl[-16:])


def test_checksums_bad_before_stay_bad_and_udp_zero_stays_zero(run_nf):
    good = Ether(udp_pkt(100))
    bad_udp = good.copy()
    bad_udp[UDP].chksum ^= 0x5555
    no_sum = good.copy()
    no_sum[UDP].chksum = 0
    bad_tcp = Ether(tcp_pkt(100))
    bad_tcp[TCP].chksum ^= 0x0101
    frames = [raw(bad_udp), raw(no_sum), raw(bad_tcp)]
    enc = run_nf(crypto_nf("encrypt"), frames).output
    assert len(enc) == 3
    assert not checksums_valid(enc[0]) and not checksums_valid(enc[2])
    assert Ether(enc[1])[UDP].chksum == 0 and checksums_valid(enc[1])
    assert run_nf(crypto_nf("decrypt"), enc).output == frames


def test_ip_options_vlan_and_padding(run_nf):
    from scapy.all import Dot1Q, IPOption_RR

    opts = raw(eth() / IP(src="10.1.0.1", dst="10.2.0.1", options=[IPOption_RR()]) /
               UDP(sport=9, dport=9) / b"options")  # fmt: skip
    tagged = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) /
                 IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=1, dport=2) / b"vlan")  # fmt: skip
    padded = udp_pkt(3) + b"\0" * (60 - len(udp_pkt(3)))  # Ethernet padding to 60 bytes
    enc = run_nf(crypto_nf("encrypt"), [opts, tagged, padded]).output
    assert all(checksums_valid(f) for f in enc)
    assert len(enc[2]) == len(udp_pkt(3)) + 40  # the padding is not part of the packet
    assert run_nf(crypto_nf("decrypt"), enc).output == [opts, tagged, udp_pkt(3)]


def test_syn_mss_clamped_to_fit_the_trailer(run_nf):
    frames = [
        tcp_pkt(0, flags="S", options=[("MSS", 1460), ("WScale", 7)]),
        tcp_pkt(0, flags="SA", options=[("NOP", None), ("MSS", 9000)]),  # value at an odd offset
        tcp_pkt(0, flags="S", options=[("MSS", 536)]),  # small enough already
        tcp_pkt(0, flags="A", options=[("MSS", 1460)]),  # not a SYN: left alone
    ]
    out = run_nf(crypto_nf("encrypt"), frames)
    mss = [dict(Ether(f)[TCP].options).get("MSS") for f in out.output]
    assert mss == [1420, 1420, 536, 1460]
    assert all(checksums_valid(f) for f in out.output)
    assert out.summary["nf_stats"]["mss_clamped"] == 2
    off = run_nf(crypto_nf("encrypt", clamp_mss=False, mtu=1400), frames)
    assert off.output == frames


def test_malformed_and_other_traffic(run_nf):
    bad = list(malformed().values())
    short_tcp = bytearray(tcp_pkt(20))
    short_tcp[14 + 20 + 12] = 0xF0  # data offset 60 > segment
    short_udp = bytearray(udp_pkt(20))
    short_udp[14 + 20 + 4 : 14 + 20 + 6] = (9).to_bytes(2, "big")  # UDP length != IP's
    bad += [bytes(short_tcp), bytes(short_udp)]
    v6 = raw(eth() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / b"six")
    bad += [v6[: 14 + 30], v6[:-1]]  # IPv6 header cut short; payload length past the frame
    frag = raw(eth() / IP(src="10.1.0.1", dst="10.2.0.1", flags="MF") / UDP() / Raw(b"x" * 40))
    hop = raw(eth() / IPv6(dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP() / Raw(b"x" * 5))
    other = [non_ip()["arp"], raw(icmp()), frag, hop]
    good = [udp_pkt(10), tcp_pkt(10)]
    frames = bad + other + good
    for kind in ("encrypt", "decrypt"):
        drop = run_nf(crypto_nf(kind), frames)
        st = drop.summary["nf_stats"]
        assert st["malformed"] == len(bad) and st["other_dropped"] == len(other)
        if kind == "encrypt":
            assert len(drop.output) == 2 and st["encrypted"] == 2
        else:  # clear payloads shorter than a trailer
            assert drop.output == [] and st["too_short"] == 2
        passed = run_nf(crypto_nf(kind, other="pass"), frames)
        assert passed.output[: len(other)] == other
        assert passed.summary["nf_stats"]["other_passed"] == len(other)
    # garbage after a valid-looking header: decrypt refuses it, never crashes
    junk = [udp_pkt(n)[:-n] + bytes([0xA5]) * n for n in (40, 41, 100, 1000)]
    dec = run_nf(crypto_nf("decrypt"), junk)
    assert dec.output == [] and dec.summary["nf_stats"]["auth_failed"] == 4


@pytest.mark.parametrize(
    ("config", "field", "reason"),
    [
        ({"key_file": "short.key"}, "config.key_file", "32-byte key"),
        ({"key_file": "missing.key"}, "config.key_file", "no such file"),
        ({"key": "not a key!"}, "config.key", "neither hex nor base64"),
        ({"key": "zz" * 32}, "config.key", "base64 of 48 bytes"),
        ({}, "config.key_file", "exactly one of"),
    ],
)
def test_bad_key_is_refused(tmp_path, config, field, reason):
    (tmp_path / "short.key").write_text("00ff" * 15 + "\n")  # 30 bytes
    cfg = nf_config(
        tmp_path, "enkey", {"type": "encrypt", "config": config},
        "net_null0", None, max_packets=1,
    )  # fmt: skip
    result = run_config(tmp_path, cfg)
    assert result.returncode == 2, result.stderr
    assert f"bad config: {field}" in result.stderr and reason in result.stderr
    assert "00ff00ff" not in result.stderr  # the key is never echoed


def test_only_dst_leaves_the_other_direction_alone(run_nf):
    # a two-way chain: client 10.1.0.1 -> server 10.2.0.1 encrypted, the replies untouched
    def rev(frame: bytes) -> bytes:
        p = Ether(frame)
        p[IP].src, p[IP].dst = p[IP].dst, p[IP].src
        del p[IP].chksum, p[p[IP].payload.__class__].chksum
        return raw(p)

    out_ = [udp_pkt(50), tcp_pkt(60)]
    back = [rev(udp_pkt(70)), rev(tcp_pkt(80)), raw(icmp(dst="10.1.0.1"))]
    syn_ack = rev(tcp_pkt(0, flags="SA", options=[("MSS", 1460)]))
    only = {"only_dst": ["10.2.0.0/16"]}
    enc = run_nf(crypto_nf("encrypt", **only), out_ + back + [syn_ack])
    assert enc.output[2:5] == back  # untouched, ICMP too (other: drop applies to selected only)
    assert [len(f) for f in enc.output[:2]] == [len(f) + 40 for f in out_]
    assert dict(Ether(enc.output[5])[TCP].options)["MSS"] == 1420  # the reply's SYN-ACK too
    assert checksums_valid(enc.output[5])
    st = enc.summary["nf_stats"]
    assert st["not_selected"] == 4 and st["encrypted"] == 2 and st["mss_clamped"] == 1
    dec = run_nf(crypto_nf("decrypt", **only), enc.output[:5])
    assert dec.output == out_ + back and dec.summary["nf_stats"]["not_selected"] == 3


def test_ipv6_round_trip_every_payload_size(run_nf):
    def v6(n: int, proto) -> bytes:
        pl = bytes((i * 5 + n) & 0xFF for i in range(n))
        return raw(eth() / IPv6(src="fd00:1::1", dst="fd00:2::1") / proto / pl)

    udp_max, tcp_max = MTU - 48 - 40, MTU - 60 - 40  # a 40-byte IPv6 header
    frames = [v6(n, UDP(sport=7, dport=7777)) for n in range(0, udp_max + 1)]
    frames += [v6(n, TCP(sport=8, dport=80, flags="PA")) for n in range(0, tcp_max + 1)]
    too_big = [v6(udp_max + 1, UDP(sport=7, dport=7777)), v6(tcp_max + 1, TCP(sport=8))]
    syn = v6(0, TCP(sport=9, dport=80, flags="S", options=[("MSS", 1440)]))
    enc = run_nf(crypto_nf("encrypt"), frames + too_big + [syn])
    st = enc.summary["nf_stats"]
    assert st["too_big"] == 2 and st["encrypted"] == len(frames) - 2
    assert dict(Ether(enc.output[-1])[TCP].options)["MSS"] == MTU - 60 - 40
    for i, (before, after) in enumerate(zip(frames, enc.output, strict=False)):
        hdr = 62 if before[20] == 17 else 74  # Ethernet + IPv6 + UDP / TCP without options
        if i % 4 == 0 or i < 8:
            assert checksums_valid(after), Ether(after).summary()
        keep = [(0, 18), (20, 58)] + ([(60, 70), (72, 74)] if hdr == 74 else [])
        assert all(before[a:b] == after[a:b] for a, b in keep)
        plain, pl = before[hdr:], after[hdr:]
        if plain:
            assert open_aead(KEY, pl[-40:-16], pl[:-40], pl[-16:]) == plain
    dec = run_nf(crypto_nf("decrypt"), enc.output[: len(frames)])
    assert dec.output == frames
    # only_dst names IPv4 prefixes: IPv6 then passes untouched
    sel = run_nf(crypto_nf("encrypt", only_dst=["10.2.0.0/16"]), frames[5:7])
    assert sel.output == frames[5:7] and sel.summary["nf_stats"]["not_selected"] == 2
