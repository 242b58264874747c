# cython: language_level=3
# distutils: libraries = sodium
"""``encrypt`` and ``decrypt``: XChaCha20(-Poly1305) over the L4 payload (libsodium).

``encrypt`` turns the payload ``P`` (n > 0 bytes) of an IPv4 or IPv6 TCP or UDP
packet into ``C || nonce || tag``: ``C`` is ``P`` encrypted in place, ``nonce`` the
24-byte XChaCha20 nonce (``salt`` 16 random bytes drawn at configure time ||
a 64-bit big-endian per-packet counter), ``tag`` the Poly1305 tag (``mode:
aead``; ``mode: stream`` has no tag).  It fixes the IPv4 total length (IPv6
payload length), the UDP length, and the IPv4 and L4 checksums incrementally (RFC 1624), so a bad
checksum stays bad; the rest of the headers is untouched, except that, with
``clamp_mss``, a SYN's MSS option is lowered so that encrypted full-size
segments still fit the MTU.  ``decrypt`` verifies (aead) and restores the
original packet byte for byte.  docs/encrypt.rst has the format and the
reasons; config parsing is in :mod:`worker.nf_crypto`.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from cext.dpdk cimport rte_raw_cksum
from cext.nf cimport QD_DROP, NativeNF, qd_batch, qd_pkt
from cext.pkt cimport QD_PARSE_BAD, QD_PARSE_NON_IP, qd_flow, qd_parse, qd_rd16

from worker.nf_crypto import NONCE_BYTES, SALT_BYTES, TAG_BYTES, parse_crypto


cdef extern from "sodium.h":
    int sodium_init()
    void randombytes_buf(void *buf, size_t size)
    void sodium_memzero(void *pnt, size_t size)
    int crypto_core_hchacha20(unsigned char *out, const unsigned char *inp,
                              const unsigned char *k, const unsigned char *c) nogil
    int crypto_aead_chacha20poly1305_ietf_encrypt_detached(
        unsigned char *c, unsigned char *mac, unsigned long long *maclen_p,
        const unsigned char *m, unsigned long long mlen,
        const unsigned char *ad, unsigned long long adlen,
        const unsigned char *nsec, const unsigned char *npub, const unsigned char *k) nogil
    int crypto_aead_chacha20poly1305_ietf_decrypt_detached(
        unsigned char *m, unsigned char *nsec,
        const unsigned char *c, unsigned long long clen, const unsigned char *mac,
        const unsigned char *ad, unsigned long long adlen,
        const unsigned char *npub, const unsigned char *k) nogil
    int crypto_stream_chacha20_ietf_xor(
        unsigned char *c, const unsigned char *m, unsigned long long mlen,
        const unsigned char *n, const unsigned char *k) nogil


# XChaCha20(-Poly1305) with nonce N = salt(16) || counter(8) is, by definition
# (draft-irtf-cfrg-xchacha), ChaCha20(-Poly1305)-IETF under the subkey
# HChaCha20(key, salt) with the 12-byte nonce 0^4 || counter.  The salt is fixed
# per encrypting process, so the subkey is computed once (encrypt) or once per
# salt seen (decrypt caches the last one) instead of once per packet: the
# output is exactly libsodium's crypto_aead_xchacha20poly1305_ietf_*.


cdef enum:
    L4_OK = 0
    L4_OTHER = 1        # not TCP/UDP right after the IP header, or an IPv4 fragment: 'other'
    L4_BAD = 2          # malformed: dropped
    SALT_LEN = 16
    NONCE_LEN = 24
    TAG_LEN = 16


ctypedef struct l4_layout:
    uint32_t dst        # IPv4 destination (host order); valid if ip == 4
    uint8_t ip          # 4 or 6: a well-formed IP packet (even if L4_OTHER); 0: not IP
    uint32_t l3         # frame offset of the IPv4/IPv6 header
    uint32_t l4         # frame offset of the TCP/UDP header
    uint32_t ip_end     # frame offset just past the IP packet (Ethernet padding follows)
    uint32_t pl         # frame offset of the L4 payload
    uint32_t n          # payload length
    uint32_t ck         # frame offset of the L4 checksum
    uint8_t udp


cdef inline int l4_of(const uint8_t *d, l4_layout *L, uint8_t proto) noexcept nogil:
    """TCP/UDP header and payload between L.l4 and L.ip_end."""
    cdef uint32_t l4len = L.ip_end - L.l4, doff
    if proto == 6:
        if l4len < 20:
            return L4_BAD
        doff = (d[L.l4 + 12] >> 4) * 4
        if doff < 20 or doff > l4len:
            return L4_BAD
        L.udp = 0
        L.pl = L.l4 + doff
        L.ck = L.l4 + 16
    else:
        if l4len < 8 or qd_rd16(d + L.l4 + 4) != l4len:
            return L4_BAD
        L.udp = 1
        L.pl = L.l4 + 8
        L.ck = L.l4 + 6
    L.n = L.ip_end - L.pl
    return L4_OK


cdef inline int layout6(const qd_pkt *p, l4_layout *L) noexcept nogil:
    """IPv6 with TCP or UDP right after the fixed header; extension headers: other."""
    cdef const uint8_t *d = p.data
    cdef uint32_t l3 = 14, n = p.len
    cdef uint16_t et = qd_rd16(d + 12)
    cdef uint8_t nh
    if et == 0x8100 or et == 0x88a8:
        l3 = 18
        et = qd_rd16(d + 16)   # qd_parse checked n >= 18 for a tagged frame
    if et != 0x86dd:
        return L4_OTHER
    if n < l3 + 40 or (d[l3] >> 4) != 6:
        return L4_BAD
    L.l3 = l3
    L.l4 = l3 + 40
    L.ip_end = l3 + 40 + qd_rd16(d + l3 + 4)
    if L.ip_end > n:
        return L4_BAD
    L.ip = 6
    nh = d[l3 + 6]
    if nh != 6 and nh != 17:
        return L4_OTHER
    return l4_of(d, L, nh)


cdef inline int layout(const qd_pkt *p, l4_layout *L) noexcept nogil:
    cdef qd_flow f
    cdef const uint8_t *d = p.data
    cdef int r = qd_parse(p, &f)
    L.ip = 0
    if r == QD_PARSE_BAD:
        return L4_BAD
    if r == QD_PARSE_NON_IP:
        return layout6(p, L)
    L.ip = 4
    L.dst = f.dst
    if qd_rd16(d + f.l3_off + 6) & 0x3fff:       # MF or a fragment offset
        return L4_OTHER
    if f.proto != 6 and f.proto != 17:
        return L4_OTHER
    L.l3 = f.l3_off
    L.l4 = f.l4_off
    L.ip_end = f.l3_off + qd_rd16(d + f.l3_off + 2)
    return l4_of(d, L, f.proto)


# One's-complement arithmetic on 16-bit words as they lie in memory (loaded with
# memcpy, host order): sums, checksum fields and be16() values mix freely.

cdef inline uint16_t ld16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline void st16(uint8_t *p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)


cdef inline uint16_t be16(uint32_t x) noexcept nogil:
    cdef uint8_t b[2]
    b[0] = (x >> 8) & 0xff
    b[1] = x & 0xff
    return ld16(b)


cdef inline uint16_t fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return <uint16_t>s


cdef inline uint16_t csum_replace(uint16_t ck, uint16_t old_sum, uint16_t new_sum) noexcept nogil:
    # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
    return <uint16_t>(~fold(<uint64_t>(<uint16_t>~ck) + <uint16_t>~old_sum + new_sum))


cdef inline void fix_lengths(uint8_t *d, const l4_layout *L, uint32_t old_l4,
                             uint32_t new_l4, uint16_t old_pl_sum,
                             uint16_t new_pl_sum) noexcept nogil:
    """Set the IP/UDP lengths for an L4 segment of new_l4 bytes, update all checksums."""
    cdef uint8_t *ip = d + L.l3
    cdef uint32_t old_tot, new_tot
    cdef uint16_t ck, o, n
    if L.ip == 6:
        st16(ip + 4, be16(new_l4))       # payload length; IPv6 has no header checksum
    else:
        old_tot = qd_rd16(ip + 2)
        new_tot = old_tot - old_l4 + new_l4
        # the IPv4 header checksum: only the total length changed
        st16(ip + 10, csum_replace(ld16(ip + 10), be16(old_tot), be16(new_tot)))
        st16(ip + 2, be16(new_tot))
    ck = ld16(d + L.ck)
    if L.udp and ck == 0:
        st16(d + L.l4 + 4, be16(new_l4))     # no UDP checksum: keep none
        return
    # pseudo-header length (IPv6: 32 bits, whose upper half stays 0 below 64 KiB) and
    # payload; UDP carries its length once more in its header
    o = fold(<uint64_t>old_pl_sum + be16(old_l4) + (be16(old_l4) if L.udp else 0))
    n = fold(<uint64_t>new_pl_sum + be16(new_l4) + (be16(new_l4) if L.udp else 0))
    ck = csum_replace(ck, o, n)
    if L.udp:
        st16(d + L.l4 + 4, be16(new_l4))
        if ck == 0:
            ck = 0xffff                      # RFC 768: a computed 0 is sent as all ones
    st16(d + L.ck, ck)


cdef class _CryptoNF(NativeNF):
    cdef uint8_t key[32]
    cdef uint8_t subkey[32]     # HChaCha20(key, salt) of the current salt
    cdef uint8_t salt[16]       # encrypt: this process's salt; decrypt: the cached one
    cdef uint8_t ietf_nonce[12]  # 0^4 || counter
    cdef bint aead
    cdef bint pass_other
    cdef uint32_t trailer
    cdef uint32_t sel_net[64]    # only_dst prefixes (host order); n_sel == 0: every packet
    cdef uint32_t sel_mask[64]
    cdef int n_sel
    cdef readonly unsigned long long malformed, other_passed, other_dropped, empty
    cdef readonly unsigned long long not_selected

    def configure(self, config):
        if sodium_init() < 0:
            raise RuntimeError("libsodium failed to initialise")
        cfg = parse_crypto(config or {}, self.base_dir, self.role())
        if len(cfg.key) != 32 or SALT_BYTES != SALT_LEN or NONCE_BYTES != NONCE_LEN:
            raise AssertionError("worker.nf_crypto and cext.nf_crypto disagree on sizes")
        if TAG_BYTES != TAG_LEN:
            raise AssertionError("worker.nf_crypto and cext.nf_crypto disagree on sizes")
        memcpy(self.key, <const char *>cfg.key, 32)
        self.aead = cfg.mode == "aead"
        self.pass_other = cfg.other == "pass"
        self.trailer = cfg.trailer
        if len(cfg.only_dst) > 64:
            raise AssertionError("worker.nf_crypto allows more only_dst prefixes than fit")
        self.n_sel = len(cfg.only_dst)
        for i, (net, depth) in enumerate(cfg.only_dst):
            self.sel_mask[i] = (0xffffffff << (32 - depth)) & 0xffffffff if depth else 0
            self.sel_net[i] = net & self.sel_mask[i]
        return cfg

    def role(self):
        raise NotImplementedError

    def __dealloc__(self):
        sodium_memzero(self.key, 32)
        sodium_memzero(self.subkey, 32)

    cdef inline void set_nonce(self, const uint8_t *counter) noexcept nogil:
        memset(self.ietf_nonce, 0, 4)
        memcpy(self.ietf_nonce + 4, counter, 8)

    cdef inline bint unselected(self, const l4_layout *L) noexcept nogil:
        """An IP packet to a destination outside only_dst (IPv6: every one): left untouched."""
        cdef int j
        if self.n_sel == 0 or L.ip == 0:
            return False
        if L.ip == 6:                     # only_dst names IPv4 prefixes
            self.not_selected += 1
            return True
        for j in range(self.n_sel):
            if L.dst & self.sel_mask[j] == self.sel_net[j]:
                return False
        self.not_selected += 1
        return True

    cdef inline void on_other(self, qd_batch *batch, uint16_t i) noexcept nogil:
        if self.pass_other:
            self.other_passed += 1
        else:
            self.other_dropped += 1
            batch.verdicts[i] = QD_DROP


cdef class EncryptNF(_CryptoNF):
    """Encrypts the L4 payload of IPv4 and IPv6 TCP/UDP packets (see the module doc)."""

    cdef uint64_t counter
    cdef uint32_t mtu
    cdef uint16_t mss_limit
    cdef bint clamp_mss
    cdef readonly unsigned long long encrypted, too_big, no_room, mss_clamped

    def role(self):
        return "encrypt"

    def configure(self, config):
        cfg = _CryptoNF.configure(self, config)
        self.mtu = cfg.mtu
        self.clamp_mss = cfg.clamp_mss
        self.mss_limit = cfg.mss_limit
        # a fresh salt per process start: no (key, nonce) pair repeats across
        # restarts or across instances sharing a key (2^-128 per pair of starts)
        randombytes_buf(self.salt, SALT_LEN)
        crypto_core_hchacha20(self.subkey, self.salt, self.key, NULL)
        self.counter = 0

    def stats(self):
        return {"encrypted": self.encrypted, "empty": self.empty, "malformed": self.malformed,
                "other_passed": self.other_passed, "other_dropped": self.other_dropped,
                "too_big": self.too_big, "no_room": self.no_room,
                "mss_clamped": self.mss_clamped, "nonces_used": self.counter,
                "not_selected": self.not_selected}

    cdef void clamp(self, uint8_t *d, const l4_layout *L) noexcept nogil:
        """Lower the MSS option of a SYN to mss_limit (checksum updated incrementally)."""
        cdef uint32_t i = L.l4 + 20, end = L.pl, olen, a, alen
        cdef uint16_t before, after
        cdef uint16_t limit = self.mss_limit - (20 if L.ip == 6 else 0)  # 40 B IPv6 header
        if not (d[L.l4 + 13] & 0x02):
            return
        while i < end:
            if d[i] == 0:
                return
            if d[i] == 1:
                i += 1
                continue
            if i + 1 >= end:
                return
            olen = d[i + 1]
            if olen < 2 or i + olen > end:
                return
            if d[i] == 2 and olen == 4:
                if qd_rd16(d + i + 2) <= limit:
                    return
                # the 16-bit words (aligned to the TCP header) that hold the value
                a = L.l4 + ((i + 2 - L.l4) & ~1u)
                alen = 4 if (i + 2 - L.l4) & 1 else 2
                before = rte_raw_cksum(d + a, alen)
                d[i + 2] = limit >> 8
                d[i + 3] = limit & 0xff
                after = rte_raw_cksum(d + a, alen)
                st16(d + L.ck, csum_replace(ld16(d + L.ck), before, after))
                self.mss_clamped += 1
                return
            i += olen

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i
        cdef l4_layout L
        cdef qd_pkt *p
        cdef uint8_t *d
        cdef uint8_t *pl
        cdef uint8_t *nonce
        cdef uint32_t t = self.trailer, l4len
        cdef uint16_t old_sum, new_sum
        cdef uint64_t c
        cdef int k
        for i in range(batch.count):
            p = &batch.pkts[i]
            k = layout(p, &L)
            if k == L4_BAD:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
                continue
            d = p.data
            if k == L4_OK and self.clamp_mss and not L.udp:
                self.clamp(d, &L)   # both directions: the peer's MSS bounds what we seal
            if self.unselected(&L):
                continue
            if k == L4_OTHER:
                self.on_other(batch, i)
                continue
            if L.n == 0:
                self.empty += 1
                continue
            if L.ip_end - L.l3 + t > self.mtu:
                self.too_big += 1
                batch.verdicts[i] = QD_DROP
                continue
            if L.ip_end + t > <uint32_t>p.len + p.tailroom:
                self.no_room += 1
                batch.verdicts[i] = QD_DROP
                continue
            pl = d + L.pl
            old_sum = rte_raw_cksum(pl, L.n)
            nonce = pl + L.n
            memcpy(nonce, self.salt, SALT_LEN)
            c = self.counter
            self.counter += 1
            for k in range(8):
                nonce[SALT_LEN + k] = (c >> (56 - 8 * k)) & 0xff
            self.set_nonce(nonce + SALT_LEN)
            if self.aead:
                crypto_aead_chacha20poly1305_ietf_encrypt_detached(
                    pl, nonce + NONCE_LEN, NULL, pl, L.n, NULL, 0, NULL, self.ietf_nonce,
                    self.subkey)
            else:
                crypto_stream_chacha20_ietf_xor(pl, pl, L.n, self.ietf_nonce, self.subkey)
            new_sum = rte_raw_cksum(pl, L.n + t)
            l4len = L.ip_end - L.l4
            fix_lengths(d, &L, l4len, l4len + t, old_sum, new_sum)
            p.tailroom = <uint16_t>(<uint32_t>p.len + p.tailroom - (L.ip_end + t))
            p.len = <uint16_t>(L.ip_end + t)
            self.encrypted += 1


cdef class DecryptNF(_CryptoNF):
    """Verifies (aead) and decrypts what :class:`EncryptNF` made; restores the packet."""

    cdef readonly unsigned long long decrypted, auth_failed, too_short, salts_seen
    cdef bint have_salt

    def role(self):
        return "decrypt"

    def stats(self):
        return {"decrypted": self.decrypted, "empty": self.empty, "malformed": self.malformed,
                "other_passed": self.other_passed, "other_dropped": self.other_dropped,
                "auth_failed": self.auth_failed, "too_short": self.too_short,
                "salts_seen": self.salts_seen, "not_selected": self.not_selected}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i
        cdef l4_layout L
        cdef qd_pkt *p
        cdef uint8_t *d
        cdef uint8_t *pl
        cdef uint8_t *nonce
        cdef uint32_t t = self.trailer, m, l4len
        cdef uint16_t old_sum, new_sum
        cdef int k
        for i in range(batch.count):
            p = &batch.pkts[i]
            k = layout(p, &L)
            if k == L4_BAD:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
                continue
            if self.unselected(&L):
                continue
            if k == L4_OTHER:
                self.on_other(batch, i)
                continue
            if L.n == 0:
                self.empty += 1
                continue
            if L.n < t:
                self.too_short += 1
                batch.verdicts[i] = QD_DROP
                continue
            d = p.data
            pl = d + L.pl
            m = L.n - t
            nonce = pl + m
            old_sum = rte_raw_cksum(pl, L.n)
            if not self.have_salt or memcmp(nonce, self.salt, SALT_LEN) != 0:
                # a new sender (or restart): derive its subkey once (the salt is public)
                memcpy(self.salt, nonce, SALT_LEN)
                crypto_core_hchacha20(self.subkey, self.salt, self.key, NULL)
                self.have_salt = True
                self.salts_seen += 1
            self.set_nonce(nonce + SALT_LEN)
            if self.aead:
                # verifies the tag before it writes anything: a forgery stays untouched
                if crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                        pl, NULL, pl, m, nonce + NONCE_LEN, NULL, 0, self.ietf_nonce,
                        self.subkey) != 0:
                    self.auth_failed += 1
                    batch.verdicts[i] = QD_DROP
                    continue
            else:
                crypto_stream_chacha20_ietf_xor(pl, pl, m, self.ietf_nonce, self.subkey)
            new_sum = rte_raw_cksum(pl, m)
            l4len = L.ip_end - L.l4
            fix_lengths(d, &L, l4len, l4len - t, old_sum, new_sum)
            p.tailroom = <uint16_t>(<uint32_t>p.len + p.tailroom - (L.ip_end - t))
            p.len = <uint16_t>(L.ip_end - t)
            self.decrypted += 1
