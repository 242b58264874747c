"""urlfilter through the real runtime (net_pcap in, net_pcap out).

Each test builds many connections into one pcap (the flow table keeps them
apart), runs ``quadrant-nf`` once and compares the output frames with the
expected ones byte for byte: allowed connections pass untouched, blocked ones
lose their packets from the match on (or get them rewritten into RSTs).
"""

from __future__ import annotations

import random
import uuid

import pytest
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, Raw, RawPcapReader, RawPcapWriter, raw, wrpcap

from tests.dataplane.conftest import nf_config, run_config
from tests.dataplane.packets import malformed, non_ip
from tests.dataplane.tcpflows import CLI_IP, SRV_IP, Conn, request

BANNED = "/shop/banned-item?id=7"
ALLOWED = "/shop/allowed-item?id=7"
URI_RULE = 'block tcp any any -> any 80 (msg:"banned"; content:"/banned"; http_uri; sid:1;)'


def write_pcap(path, frames: list[bytes]) -> None:
    with RawPcapWriter(str(path), linktype=1) as w:  # raw bytes: no dissecting
        for f in frames:
            w.write(f)


def run_uf(tmp_path, config: dict, frames: list[bytes]):
    """Run urlfilter over ``frames``; returns (output frames, nf_stats)."""
    tag = "uf" + uuid.uuid4().hex[:8]
    inp, out = tmp_path / f"{tag}-in.pcap", tmp_path / f"{tag}-out.pcap"
    write_pcap(inp, frames)
    cfg = nf_config(
        tmp_path,
        tag,
        {"type": "urlfilter", "config": config},
        f"net_pcap{tag},rx_pcap={inp}",
        f"net_pcapo{tag},tx_pcap={out}",
        max_packets=len(frames),
    )
    cfg["eal"]["file_prefix"] = f"uf-{tag}"
    result = run_config(tmp_path, cfg)
    assert result.returncode == 0, result.stderr
    output = [bytes(f) for f, _ in RawPcapReader(str(out))] if out.exists() else []
    return output, result.summary["nf_stats"]


def run_bad(tmp_path, config: dict):
    tag = "uf" + uuid.uuid4().hex[:8]
    inp = tmp_path / f"{tag}.pcap"
    wrpcap(str(inp), [Ether() / IP() / UDP()])
    cfg = nf_config(
        tmp_path,
        tag,
        {"type": "urlfilter", "config": config},
        f"net_pcap{tag},rx_pcap={inp}",
        f"net_null{tag}",
        max_packets=1,
    )
    cfg["eal"]["file_prefix"] = f"uf-{tag}"
    return run_config(tmp_path, cfg)


class Plan:
    """Input frames and the frames expected out (in order)."""

    def __init__(self):
        self.frames: list[bytes] = []
        self.expected: list[bytes] = []

    def passes(self, *frames: bytes):
        self.frames += frames
        self.expected += frames

    def dropped(self, *frames: bytes):
        self.frames += frames

    def becomes(self, frame: bytes, out: bytes):
        self.frames.append(frame)
        self.expected.append(out)


def pieces(req: bytes, k: int, mode: str) -> tuple[list[tuple[int, bytes]], int]:
    """Client segments (offset, data) carrying ``req`` split at byte ``k``, in the
    order sent, and the index of the segment that completes the request line."""
    if mode == "inorder":
        return [(0, req[:k]), (k, req[k:])], 1
    if mode == "reverse":  # the second half first: buffered out of order
        return [(k, req[k:]), (0, req[:k])], 1
    if mode == "three_ooo":  # C, A, B: the gap B fills is what completes it
        k2 = k + 3
        return [(k2, req[k2:]), (0, req[:k]), (k, req[k:k2])], 2
    if mode == "retransmit":  # A twice, then B
        return [(0, req[:k]), (0, req[:k]), (k, req[k:])], 2
    if mode == "overlap":  # B' buffered first, A' overlaps its head by 3 bytes
        return [(k - 1, req[k - 1 :]), (0, req[: k + 2])], 1
    if mode == "overlap_inorder":  # A' then B' that starts 3 bytes back
        return [(0, req[: k + 2]), (k - 1, req[k - 1 :])], 1
    raise ValueError(mode)


MODES = ("inorder", "reverse", "three_ooo", "retransmit", "overlap", "overlap_inorder")


@pytest.mark.parametrize("mode", MODES)
def test_split_at_every_url_byte(tmp_path, mode):
    plan = Plan()
    banned, allowed = request(BANNED), request(ALLOWED)
    start = banned.index(b"/")
    nblocked = 0
    sport = 20000
    for target, req in ((BANNED, banned), (ALLOWED, allowed)):
        for k in range(start, start + len(target) + 1):
            c = Conn(sport)
            sport += 1
            segs, match = pieces(req, k, mode)
            plan.passes(*c.handshake())
            for i, (off, data) in enumerate(segs):
                if target == BANNED and i >= match:
                    plan.dropped(c.seg(off, data))
                else:
                    plan.passes(c.seg(off, data))
            if target == BANNED:
                plan.dropped(*c.fin(len(req)))
                nblocked += 1
            else:
                plan.passes(*c.fin(len(req)))
    if mode == "inorder":  # and one connection byte by byte
        c = Conn(sport)
        plan.passes(*c.handshake())
        last = banned.index(b"\n")  # the LF that ends the request line
        for i in range(len(banned)):
            if i < last:
                plan.passes(c.seg(i, banned[i : i + 1]))
            else:
                plan.dropped(c.seg(i, banned[i : i + 1]))
        nblocked += 1
    output, stats = run_uf(tmp_path, {"rules": [URI_RULE], "reset": "none"}, plan.frames)
    assert output == plan.expected
    assert stats["blocked"] == nblocked
    assert stats["rule_hits"] == {"1": nblocked}
    assert stats["flows"] == nblocked  # blocked ones linger; the allowed ones closed
    if mode in ("reverse", "three_ooo", "overlap"):
        assert stats["ooo_buffered"] > 0
    if mode in ("retransmit", "overlap", "overlap_inorder"):
        assert stats["overlap_bytes"] > 0
    assert stats["ooo_segs_used"] == 0


def test_first_copy_wins(tmp_path):
    plan = Plan()
    banned, benign = request("/banned/a"), request("/bonned/a")
    assert len(banned) == len(benign)
    # 1: the banned bytes are buffered out of order first; a later in-order
    #    copy of the same range says something else: the buffered copy counts
    c = Conn(30001)
    plan.passes(*c.handshake(), c.seg(5, banned[5:]))
    plan.dropped(c.seg(0, benign))
    # 2: the benign bytes were delivered first; a retransmission of the range with
    #    banned bytes changes nothing (the server has the first copy already)
    c = Conn(30002)
    plan.passes(*c.handshake(), c.seg(0, benign), c.seg(0, banned), *c.fin(len(banned)))
    output, stats = run_uf(tmp_path, {"rules": [URI_RULE], "reset": "none"}, plan.frames)
    assert output == plan.expected
    assert stats["blocked"] == 1
    # case 2's retransmission (case 1 stops at the match, before the overlap)
    assert stats["overlap_bytes"] == len(banned)


def test_insertions_the_server_would_discard_are_not_matched(tmp_path):
    """Bytes the server's TCP throws away (bad checksums, no ACK flag, a SYN inside
    the connection) must not become the filter's copy of the stream: otherwise a
    benign "insertion" followed by the banned bytes at the same sequence numbers
    would pass (the filter would take the banned ones for a retransmission)."""
    plan = Plan()
    banned, benign = request("/banned/a"), request("/bonned/a")
    conns = [Conn(33000 + i) for i in range(5)]
    a, b, c, d, e = conns
    bad_tcp = bytearray(a.seg(0, benign))
    bad_tcp[14 + 20 + 16] ^= 0x5A  # TCP checksum
    bad_ip = bytearray(b.seg(0, benign))
    bad_ip[14 + 10] ^= 0x5A  # IPv4 header checksum
    insertions = [
        bytes(bad_tcp),
        bytes(bad_ip),
        c.c2s(c.isn + 1, "P", benign),  # no ACK flag
        d.c2s(d.isn, "S", benign, ack=0),  # a SYN after the handshake
    ]
    for conn, bad in zip(conns, insertions, strict=False):
        plan.passes(*conn.handshake())
        plan.dropped(bad, conn.seg(0, banned))
    # mid-stream: a bad checksum creates no flow and is not matched either
    bad_mid = bytearray(e.seg(0, benign))
    bad_mid[14 + 20 + 16] ^= 0x5A
    plan.dropped(bytes(bad_mid), e.seg(0, banned))
    # a bare SYN with another ISN after the handshake must not move the stream
    f = Conn(33010)
    plan.passes(*f.handshake(), f.c2s(f.isn + 5000, "S", ack=0), f.seg(0, banned[:9]))
    plan.dropped(f.seg(9, banned[9:]))
    output, stats = run_uf(tmp_path, {"rules": [URI_RULE], "reset": "none"}, plan.frames)
    assert output == plan.expected
    assert stats["blocked"] == 6
    assert stats["bad_checksum"] == 3 and stats["discarded"] == 2


SCOPE_RULES = [
    'block tcp any any -> any 80 (msg:"nocase uri"; content:"/Secret"; http_uri; nocase; sid:10;)',
    'block tcp any any -> any 80 (content:"/CaseSensitive"; http_uri; sid:11;)',
    'block tcp any any -> any 80 (msg:"host"; content:"evil.example.org"; http_header; nocase;'
    " sid:12;)",
    'block tcp any any -> any 80 (content:"bad.example.net"; http_host; sid:13;)',
    'block tcp any any -> any 80 (content:"DELETE"; http_method; sid:14;)',
    'block tcp any any -> any any (msg:"raw"; content:"|de ad|beef"; sid:15;)',
    'block tcp any any -> any 80 (pcre:"/\\/api\\/v[0-9]+\\/admin/U"; sid:16;)',
    'block tcp any any -> any 80 (content:"/two"; http_uri; content:"X-Two: 2"; http_header;'
    " sid:17;)",
    'alert tcp any any -> any 80 (content:"/watched"; http_uri; sid:18;)',
    'block tcp 10.9.0.0/16 any -> any 80 (content:"/only-from-10.9"; http_uri; sid:19;)',
]


def test_scopes_nocase_host_and_friends(tmp_path):
    plan = Plan()
    blocked_reqs = [
        (request("/x/sEcReT/y"), "10"),
        (request("/CaseSensitive"), "11"),
        (request("/", host="WWW.Evil.Example.ORG"), "12"),
        (request("/", host="Bad.Example.NET"), "13"),  # http_host is lowercased
        (b"DELETE /thing HTTP/1.1\r\nHost: a\r\n\r\n", "14"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Blob: \xde\xadbeef\r\n\r\n", "15"),
        (request("/api/v2/admin/users"), "16"),
        (request("/two", extra="X-Two: 2\r\n"), "17"),
        (request("/sh%6Fp/%2Fbanned"), "1"),  # percent-decoded before matching
    ]
    passed_reqs = [
        request("/casesensitive"),  # sid 11 is case-sensitive
        request("/", host="evil.example.com"),
        request("/", host="www.good.org", extra="Referer: http://x/banned\r\n"),  # not the URI
        request("/two"),  # sid 17 needs both
        request("/", extra="X-Two: 2\r\n"),
        request("/watched"),  # alert only
        request("/only-from-10.9"),  # the rule's source does not match
        request("/Secret".replace("S", "Z")),
    ]
    sport = 31000
    for req, _ in blocked_reqs:
        c = Conn(sport)
        sport += 1
        # the last data segment is the one that completes the head
        plan.passes(*c.handshake(), c.seg(0, req[:10]))
        plan.dropped(c.seg(10, req[10:]))
    # the Host header split at every byte of its value
    req = request("/", host="evil.example.org")
    h = req.index(b"evil")
    for k in range(h, h + len("evil.example.org") + 1):
        c = Conn(sport)
        sport += 1
        plan.passes(*c.handshake(), c.seg(0, req[:k]))
        plan.dropped(c.seg(k, req[k:]))
    # pipelined: an allowed request with a body, then a banned one
    c = Conn(sport)
    sport += 1
    first = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n/banned/x"
    second = request("/banned/y")
    plan.passes(*c.handshake(), c.seg(0, first))
    plan.dropped(c.seg(len(first), second))
    # the contents of one rule must all match in the same request
    c = Conn(sport)
    sport += 1
    two = request("/two") + request("/", extra="X-Two: 2\r\n")
    plan.passes(*c.handshake(), c.seg(0, two), *c.fin(len(two)))
    for req in passed_reqs:
        c = Conn(sport)
        sport += 1
        plan.passes(*c.handshake(), c.seg(0, req[:10]), c.seg(10, req[10:]), *c.fin(len(req)))
    rules = [*SCOPE_RULES, URI_RULE]
    output, stats = run_uf(tmp_path, {"rules": rules, "reset": "none"}, plan.frames)
    assert output == plan.expected
    nblocked = len(blocked_reqs) + len("evil.example.org") + 1 + 1
    assert stats["blocked"] == nblocked
    assert stats["alerts"] == 1
    hits = stats["rule_hits"]
    assert hits["12"] == 1 + len("evil.example.org") + 1
    assert hits["1"] == 2
    for sid in ("10", "11", "13", "14", "15", "16", "17", "18"):
        assert hits[sid] == 1, sid
    assert "19" not in hits
    assert stats["http_requests"] >= len(blocked_reqs) + len(passed_reqs)


def check_rst(frame: bytes, src: str, dst: str, sport: int, dport: int, seq: int, ack: int):
    p = Ether(frame)
    assert p[IP].src == src and p[IP].dst == dst
    assert (p[TCP].sport, p[TCP].dport) == (sport, dport)
    assert str(p[TCP].flags) == "RA"
    assert (p[TCP].seq, p[TCP].ack) == (seq, ack)
    assert p[IP].len == 40 and len(frame) == 54 and not p[TCP].payload
    fixed = p.copy()
    del fixed[IP].chksum, fixed[TCP].chksum  # scapy recomputes both from scratch
    assert raw(fixed) == frame, "checksums"
    return p


@pytest.mark.parametrize("reset", ["both", "server", "client"])
def test_reset_rewrites(tmp_path, reset):
    """The matching packet becomes a RST to the server, the next one of the
    connection a RST to the client; checked field by field, checksums by scapy."""
    req = request(BANNED)
    k = 12
    to_server, to_client = reset in ("both", "server"), reset in ("both", "client")
    frames, expected = [], []  # expected: a frame, None (dropped) or a RST check

    def rst_to_server(c):
        return lambda f: check_rst(f, CLI_IP, SRV_IP, c.sport, 80, c.isn + 1 + k, c.srv_isn + 1)

    a, b = Conn(32001), Conn(32002)
    for c in (a, b):
        for f in (*c.handshake(), c.seg(0, req[:k])):
            frames.append(f)
            expected.append(f)
        frames.append(c.seg(k, req[k:]))  # the match
        expected.append(rst_to_server(c) if to_server else None)
    # A: the client retransmits: turned around towards the client
    frames.append(a.seg(k, req[k:]))
    expected.append(
        (lambda f: reflected(f, a, a.srv_isn + 1, a.isn + 1 + len(req))) if to_client else None
    )
    # B: the server's next packet (an ACK of what it got): keeps its own numbers
    frames.append(b.s2c(b.srv_isn + 1, "A", ack=b.isn + 1 + k))
    expected.append(
        (lambda f: check_rst(f, SRV_IP, CLI_IP, 80, b.sport, b.srv_isn + 1, b.isn + 1 + k))
        if to_client
        else None
    )
    # everything after is dropped
    frames += [a.seg(k, req[k:]), *a.fin(len(req)), b.s2c(b.srv_isn + 1, "PA", b"HTTP/1.1 200")]
    expected += [None] * 4
    output, stats = run_uf(tmp_path, {"rules": [URI_RULE], "reset": reset}, frames)
    want = [e for e in expected if e is not None]
    assert len(output) == len(want)
    for got, e in zip(output, want, strict=True):
        if callable(e):
            e(got)
        else:
            assert got == e
    assert stats["blocked"] == 2
    assert stats["resets_server"] == (2 if to_server else 0)
    assert stats["resets_client"] == (2 if to_client else 0)


def reflected(frame: bytes, c: Conn, seq: int, ack: int):
    p = check_rst(frame, SRV_IP, CLI_IP, 80, c.sport, seq, ack)
    assert (p.src, p.dst) == ("02:00:00:00:00:02", "02:00:00:00:00:01")
    assert p[IP].ttl == 64


def test_memory_bounds_under_floods(tmp_path):
    # a flood of half-open connections against a table of 64 flows
    plan = Plan()
    syns = [Conn(10000 + i).handshake()[0] for i in range(200)]
    plan.passes(*syns[:64])
    plan.dropped(*syns[64:])  # overload: drop (the clients will retry their SYN)
    output, stats = run_uf(tmp_path, {"rules": [URI_RULE], "flows": 64}, plan.frames)
    assert output == plan.expected
    assert stats["flows"] == 64 and stats["table_full"] == 136

    # out-of-order floods: 4 buffers (8 KiB) per flow, 32 (64 KiB) in all
    plan = Plan()
    conns = [Conn(11000 + i) for i in range(20)]
    for c in conns:
        plan.passes(*c.handshake())
    for i, c in enumerate(conns):
        segs = [c.seg(100 * (j + 1), b"o" * 50) for j in range(10)]
        if i < 8:  # the first 8 flows fill the pool: 4 each, then their own bound
            plan.passes(*segs[:4])
            plan.dropped(*segs[4:])
        else:  # the pool is empty: every segment of the later flows is refused
            plan.dropped(*segs)
    # flow 0 fills its gap: its buffers go back to the pool, flow 8 can buffer again
    plan.passes(conns[0].seg(0, b"g" * 100))
    plan.passes(conns[8].seg(100, b"o" * 50))
    config = {"rules": [URI_RULE], "flows": 64, "ooo_flow_kb": 8, "ooo_memory_kb": 64}
    output, stats = run_uf(tmp_path, config, plan.frames)
    assert output == plan.expected
    assert stats["ooo_segs_peak"] == 32
    assert stats["ooo_drop_flow"] == 8 * 6
    assert stats["ooo_drop_memory"] == 12 * 10
    assert stats["ooo_buffered"] == 8 * 4 + 1
    # flow 0 got [0, 150) in order (one buffer back), flow 8 took one
    assert stats["ooo_segs_used"] == 32


@pytest.mark.parametrize("midstream", ["pickup", "pass", "drop"])
def test_midstream_policies(tmp_path, midstream):
    plan = Plan()
    req = request(BANNED)
    # no handshake seen (a restarted NF, a migrated flow): data of the client
    mid = Conn(16001)
    # the SYN was missed, the SYN-ACK was not: tracking starts from its ACK number
    late = Conn(16002)
    # server data of a connection not seen opening: never taken for a client
    srv = Conn(16003)
    srv_data = srv.s2c(srv.srv_isn + 1, "PA", b"GET /banned/from/the/server HTTP/1.1\r\n\r\n")
    if midstream == "pickup":
        plan.passes(mid.seg(0, req[:10]))
        plan.dropped(mid.seg(10, req[10:]))
    elif midstream == "pass":
        plan.passes(mid.seg(0, req[:10]), mid.seg(10, req[10:]))
    else:
        plan.dropped(mid.seg(0, req[:10]), mid.seg(10, req[10:]))
    plan.passes(*late.handshake()[1:], late.seg(0, req[:10]))
    plan.dropped(late.seg(10, req[10:]))
    lone = Conn(16005)
    plan.passes(srv_data, lone.c2s(lone.isn + 1, "A"))  # a bare ACK creates nothing
    # 8 half-open connections fill the table (2 flows are taken): with overload:
    # pass, what does not fit passes unmatched, a banned request too
    plan.passes(*[Conn(17000 + i).handshake()[0] for i in range(8)])
    full = Conn(16004)
    plan.passes(*full.handshake())
    # its data: a mid-stream packet to the filter (the SYN found no room)
    if midstream == "drop":
        plan.dropped(full.seg(0, req))
    else:
        plan.passes(full.seg(0, req))
    config = {"rules": [URI_RULE], "reset": "none", "midstream": midstream, "flows": 8}
    config["overload"] = "pass"
    output, stats = run_uf(tmp_path, config, plan.frames)
    assert output == plan.expected
    picked = midstream == "pickup"
    assert stats["blocked"] == 1 + picked
    assert stats["midstream"] == picked
    assert stats["midstream_refused"] == (0 if picked else 3)
    assert stats["table_full"] > 0 and stats["flows"] == 8


def test_expiry_fin_rst_and_idle(tmp_path):
    plan = Plan()
    fin, rst = Conn(12001), Conn(12002)
    plan.passes(*fin.handshake(), fin.seg(0, request("/a")), *fin.fin(len(request("/a"))))
    plan.passes(*rst.handshake(), rst.s2c(rst.srv_isn + 1, "R"))
    # an open connection that goes quiet: the idle timeout frees it (all of the
    # above is in the first batch, so none of it can time out half-way)
    idle = Conn(12003)
    plan.passes(*idle.handshake(), idle.seg(0, b"GET /idle HTTP/1.1\r\n"))
    # 32 half-open flows fill the table; plenty of other traffic later (>> 1 ms on
    # any machine), they have expired and 32 new connections find room
    first = [Conn(13000 + i).handshake()[0] for i in range(32)]
    later = [Conn(14000 + i).handshake()[0] for i in range(32)]
    filler = raw(Ether() / IP(src="10.7.0.1", dst="10.7.0.2") / UDP() / Raw(b"f" * 18))
    plan.passes(*first, *([filler] * 30000), *later)
    config = {
        "rules": [URI_RULE],
        "flows": 33,  # the idle connection takes one until it expires
        "handshake_timeout_s": 0.001,
        "idle_timeout_s": 0.001,
    }
    output, stats = run_uf(tmp_path, config, plan.frames)
    assert output == plan.expected
    assert stats["closed"] == 2
    assert stats["expired"] >= 33 and stats["table_full"] == 0
    assert stats["flows"] <= 32


def test_malformed_packets_never_crash(tmp_path):
    rng = random.Random(9)
    plan = Plan()
    good = Conn(15001).seg(0, b"GET /x HTTP/1.1\r\n\r\n")
    bad = list(malformed().values())
    l4 = 14 + 20
    short_doff = bytearray(good)
    short_doff[l4 + 12] = 0x20  # data offset 2 words
    long_doff = bytearray(good)
    long_doff[l4 + 12] = 0xF0  # 60 bytes: past the IP packet
    bad += [
        good[: l4 + 10],  # TCP header cut (IP length says more)
        raw(Ether() / IP(src=CLI_IP, dst=SRV_IP, proto=6) / b"\x00\x50\x00\x50") + b"\0" * 6,
        bytes(short_doff),
        bytes(long_doff)[: l4 + 20 + 8],
    ]
    frag = raw(Ether() / IP(src=CLI_IP, dst=SRV_IP, flags="MF") / TCP(dport=80) / b"GET /banned")
    frag2 = raw(Ether() / IP(src=CLI_IP, dst=SRV_IP, frag=3, proto=6) / b"/banned HTTP/1.1")
    for _ in range(2000):  # random bytes behind an IPv4 ethertype and a plausible header
        n = rng.randrange(14, 200)
        junk = bytearray(rng.randbytes(n))
        junk[12:14] = b"\x08\x00"
        if n > 14:
            junk[14] = 0x40 | rng.randrange(16)
        if n > 23:
            junk[23] = 6
        bad.append(bytes(junk))
    plan.dropped(*bad, frag, frag2)
    # non-IP frames pass; real traffic still works after all that, VLAN-tagged too
    plan.passes(*non_ip().values())
    c = Conn(15002)
    tagged = [raw(Ether(f[:12] + b"\x81\x00\x00\x05" + f[12:])) for f in c.handshake()]
    req = request(BANNED)
    plan.passes(*tagged)
    plan.passes(
        raw(
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / Dot1Q(vlan=5)
            / IP(src=CLI_IP, dst=SRV_IP)
            / TCP(sport=15002, dport=80, seq=c.isn + 1, ack=c.srv_isn + 1, flags="PA")
            / req[:9]
        )
    )
    plan.dropped(
        raw(
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / Dot1Q(vlan=5)
            / IP(src=CLI_IP, dst=SRV_IP)
            / TCP(sport=15002, dport=80, seq=c.isn + 10, ack=c.srv_isn + 1, flags="PA")
            / req[9:]
        )
    )
    output, stats = run_uf(tmp_path, {"rules": [URI_RULE], "reset": "none"}, plan.frames)
    # random frames may happen to parse as some valid non-TCP frame: they pass
    assert [f for f in output if f in plan.expected] == plan.expected
    assert all(f in bad or f in plan.expected for f in output)
    assert stats["blocked"] == 1
    assert stats["fragments"] == 2
    assert stats["malformed"] > 1500


def test_malformed_rule_file_is_refused_with_its_line(tmp_path):
    (tmp_path / "rules.txt").write_text(
        "# a comment\n\n" + URI_RULE + "\n"
        'block tcp any any -> any 80 (content:"/x"; http_uri; nocase; sid:2; depth:4;)\n'
    )
    result = run_bad(tmp_path, {"rule_file": "rules.txt"})
    assert result.returncode == 2, result.stderr
    assert "bad config: config.rule_file" in result.stderr
    assert "rules.txt:4: option 'depth' is not in the supported subset" in result.stderr
    # an expression Hyperscan refuses (a back-reference) names its rule too
    (tmp_path / "rules2.txt").write_text(
        URI_RULE + '\nblock tcp any any -> any 80 (pcre:"/(a)\\1/"; sid:3;)\n'
    )
    result = run_bad(tmp_path, {"rule_file": "rules2.txt"})
    assert result.returncode == 2, result.stderr
    assert "rules2.txt:2: pattern rejected by Hyperscan" in result.stderr
