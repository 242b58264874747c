"""Chain 2 (``acl -> urlfilter -> encrypt``) under a real HTTP client and server.

The canonical spec (examples/chains/chain2-acl-urlfilter-encrypt.json) is
registered over REST on the whole stack (lab, controller, agents).  ``curl`` in
the source's namespace fetches pages from ``python -m http.server`` in the
sink's; between the sink's lab interface and its stack runs a real ``decrypt``
NF on the DPDK runtime (tools/lab/farside.py, docs/chains.rst *Chain 2 end to
end*).  Allowed pages must arrive byte for byte (one of them with a request
of several full-sized segments, which only fit the MTU once encrypted because
``encrypt`` clamped the MSS); banned URLs must get the connection reset at the
client, and the server must never see their request.  The NFs' own counters
(urlfilter, encrypt at teardown; decrypt) must tell the same story.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import LAB_TOPOLOGY, LAB_WAIT, ROOT, lab_prefix
from tests.e2e.lab_flows import hosts, instances
from tools.lab.farside import FarSide
from tools.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

SPEC = ROOT / "examples" / "chains" / "chain2-acl-urlfilter-encrypt.json"
PORT = 8080  # the chain's filter, ACL and URL rules name it; the sink's namespace is ours

ALLOWED = ["/index.html", "/page.bin", "/page.bin?pad=" + "q" * 3000, "/index.html"]
BANNED = [  # (path, Host header or None, the rule of examples/tables/chain2-urls.rules)
    ("/banned/page.html", None, 1001),
    ("/admin/index.html", None, 1002),
    ("/index.html", "blocked.example", 1006),
]


@pytest.fixture
def stack(root_required):
    from quadrant_app.topology import load

    conf = {"idle_timeout": 30, "warm_pool": 1, "scaling_policy": "off"}
    st = Stack(load(LAB_TOPOLOGY), prefix=f"h{lab_prefix()[1:]}", log=lambda m: None,
               controller_conf=conf)  # fmt: skip
    try:
        st.up(wait=LAB_WAIT)
        yield st
    finally:
        st.down()


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><body>Quadrant chain 2</body></html>\n")
    (site / "page.bin").write_bytes(os.urandom(256 * 1024))  # ~180 full segments back
    os.chmod(tmp_path, 0o755)
    return site


class HttpServer:
    """``python -m http.server`` in a namespace; its access log and errors in a file."""

    def __init__(self, netns: str, address: str, directory, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-u", "-m", "http.server", str(PORT),
             "--bind", address, "--directory", str(directory)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(lambda: "Serving HTTP" in self.text() or self.proc.poll() is not None, 20,
                   "http.server to listen")  # fmt: skip
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def curl(stack, url: str, out, host: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", stack.lab.ns("src"), "curl", "-sS", "--noproxy", "*",
           "--max-time", "10", "-o", str(out), "-w", "%{http_code}", url]  # fmt: skip
    if host is not None:
        cmd[-1:-1] = ["-H", f"Host: {host}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def final_counters(stack, worker: str, instance_id: int) -> list[dict]:
    """The instance's NFs' own counters, which its agent logs at teardown."""
    pattern = re.compile(rf"instance i{instance_id} final NF counters: (\[.*\])$", re.M)
    what = f"instance {instance_id}'s final counters in agent {worker}'s log"
    found = wait_until(lambda: pattern.search(stack.agent_log(worker)), 30, what)
    return json.loads(found.group(1))


def summed(per_instance: list[list[dict]]) -> list[dict]:
    """Each NF's counters added up over the instances (numbers and ``rule_hits``)."""
    out = [dict(nf) for nf in per_instance[0]]
    for nfs in per_instance[1:]:
        for total, nf in zip(out, nfs, strict=True):
            for k, v in nf.items():
                if k == "rule_hits":
                    hits = total.setdefault(k, {})
                    for sid, n in v.items():
                        hits[sid] = hits.get(sid, 0) + n
                elif isinstance(v, int) and k not in ("rules", "stream_bytes"):
                    total[k] = total.get(k, 0) + v
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_curl_through_chain2_with_decrypt_on_the_far_side(stack, site, tmp_path):
    _src, sink = hosts(stack.topology)
    spec = json.loads(SPEC.read_text())
    chain = stack.tenant.post("/v1/chains", spec)
    wait_until(lambda: instances(stack, chain["id"]), 180, "an instance of Chain 2")
    encrypt = next(nf["config"] for nf in spec["nfs"] if nf["type"] == "encrypt")
    decrypt = {k: encrypt[k] for k in ("key_file", "mode", "other", "only_dst")}
    far = FarSide(stack.lab.ns(sink.name), sink.mac, decrypt, prefix=stack.lab.plan.prefix)
    base = f"http://{sink.address}:{PORT}"
    results, server = {}, None
    try:
        server = HttpServer(stack.lab.ns(sink.name), sink.address, site, tmp_path / "server.log")
        far.up()
        for i, path in enumerate(ALLOWED):
            results[("ok", i)] = curl(stack, base + path, tmp_path / f"ok{i}")
        for i, (path, host, _sid) in enumerate(BANNED):
            results[("banned", i)] = curl(stack, base + path, tmp_path / f"banned{i}", host)
        results["after"] = curl(stack, base + "/page.bin", tmp_path / "after")
    finally:
        if server is not None:
            server.stop()
        far_summary = far.down()
    used = {f["instance_id"] for f in stack.admin.get("/v1/flows")["flows"]}
    # one instance, unless a loaded machine pushed its p99 estimate over alpha x SLO
    insts = [i for i in instances(stack, chain["id"]) if i["id"] in used]
    assert insts, used

    # the client's view: allowed pages intact, banned ones reset
    for i, path in enumerate(ALLOWED):
        r = results[("ok", i)]
        assert r.returncode == 0 and r.stdout == "200", (path[:40], r)
        want = (site / path.split("?")[0].lstrip("/")).read_bytes()
        assert sha((tmp_path / f"ok{i}").read_bytes()) == sha(want), path[:40]
    assert results["after"].returncode == 0 and results["after"].stdout == "200"
    assert (tmp_path / "after").read_bytes() == (site / "page.bin").read_bytes()
    for i, (path, _host, _sid) in enumerate(BANNED):
        r = results[("banned", i)]
        assert r.returncode == 56 and "reset" in r.stderr.lower(), (path, r)  # recv: ECONNRESET

    # the server's view: every allowed request served, no banned one ever seen
    log = server.text()
    served = re.findall(r'"GET (\S+) HTTP/1\.1" 200', log)
    assert served == [*ALLOWED, "/page.bin"], log[-3000:]  # and not one banned request
    assert log.count("ConnectionResetError") == len(BANNED), log[-3000:]  # reset, unread

    # the NFs' own counters
    dec = far_summary["nf_stats"]
    assert dec["decrypted"] > 0 and dec["auth_failed"] == 0 and dec["malformed"] == 0, dec
    stack.tenant.delete(f"/v1/chains/{chain['id']}")
    acl, uf, enc = summed([final_counters(stack, i["worker"], i["id"]) for i in insts])
    assert (acl["type"], uf["type"], enc["type"]) == ("acl", "urlfilter", "encrypt")
    n_conn = len(ALLOWED) + len(BANNED) + 1
    assert uf["flows_total"] == n_conn, uf
    assert uf["http_requests"] == n_conn, uf
    assert uf["blocked"] == uf["resets_server"] == uf["resets_client"] == len(BANNED), uf
    assert uf["rule_hits"] == {str(sid): 1 for _p, _h, sid in BANNED}, uf
    assert uf["bad_checksum"] == 0 and uf["malformed"] == 0, uf
    assert acl["denied"] == 0 and acl["allowed"] > 0, acl
    # both directions pass the instance: each SYN and SYN-ACK had its MSS lowered
    assert enc["mss_clamped"] >= 2 * n_conn, enc  # more if a SYN was sent again
    assert enc["too_big"] == 0 and enc["malformed"] == 0 and enc["no_room"] == 0, enc
    # decrypt opened what encrypt sealed: every request segment (the long URL's three and
    # more), never more than encrypt made (a frame lost on the way is sealed again)
    assert enc["encrypted"] >= dec["decrypted"] >= len(ALLOWED) + 1 + 2, (dec, enc)
    assert enc["nonces_used"] == enc["encrypted"], enc
