# cython: language_level=3
"""Ports and mempools: find a port, set up its queues, start, stop, close.

Ports come from the EAL's ``--vdev``/``-a`` arguments (a vdev such as
``net_pcap0,rx_pcap=in.pcap`` is the port named ``net_pcap0``; a PCI VF is
named by its address) or from :func:`probe` after the EAL is up.  Failures
raise :class:`cext.eal.EalError` with DPDK's message.
"""

from libc.string cimport memset

from cext.dpdk cimport (
    SOCKET_ID_ANY,
    rte_dev_probe,
    rte_errno,
    rte_eth_conf,
    rte_eth_dev_adjust_nb_rx_tx_desc,
    rte_eth_dev_close,
    rte_eth_dev_configure,
    rte_eth_dev_get_port_by_name,
    rte_eth_dev_info,
    rte_eth_dev_info_get,
    rte_eth_dev_socket_id,
    rte_eth_dev_start,
    rte_eth_dev_stop,
    rte_eth_macaddr_get,
    rte_eth_promiscuous_enable,
    rte_eth_rx_queue_count,
    rte_eth_rx_queue_setup,
    rte_eth_stats,
    rte_eth_stats_get,
    rte_eth_tx_queue_setup,
    rte_ether_addr,
    rte_mempool,
    rte_mempool_avail_count,
    rte_mempool_free,
    rte_pktmbuf_pool_create,
)
from libc.stdint cimport uint16_t

from cext.eal import EalError


cdef extern from "errno.h":
    int ENOTSUP


cdef class Mempool:
    """An mbuf pool (``rte_pktmbuf_pool_create``)."""

    cdef rte_mempool *mp
    cdef readonly str name
    cdef readonly unsigned size

    def __init__(self, str name, unsigned n, unsigned cache_size=256,
                 unsigned data_room=2048 + 128, int socket_id=SOCKET_ID_ANY):
        self.mp = rte_pktmbuf_pool_create(name.encode(), n, cache_size, 0,
                                          <uint16_t>data_room, socket_id)
        if self.mp == NULL:
            raise EalError(f"rte_pktmbuf_pool_create({name!r}, n={n})", rte_errno)
        self.name = name
        self.size = n

    def available(self):
        return rte_mempool_avail_count(self.mp)

    def free(self):
        if self.mp != NULL:
            rte_mempool_free(self.mp)
            self.mp = NULL


def probe(str devargs):
    """Attach a device after EAL init (``rte_dev_probe``), e.g. a vdev string."""
    ret = rte_dev_probe(devargs.encode())
    if ret < 0:
        raise EalError(f"rte_dev_probe({devargs!r})", -ret)


def port_by_name(str name):
    """The port id of the ethdev named ``name`` (vdev name or PCI address)."""
    cdef uint16_t port_id
    ret = rte_eth_dev_get_port_by_name(name.encode(), &port_id)
    if ret != 0:
        raise EalError(f"no DPDK port named {name!r}", -ret)
    return port_id


cdef class Port:
    """One ethdev port, set up with ``rx_queues`` x ``tx_queues`` queues."""

    cdef readonly uint16_t port_id
    cdef readonly str name
    cdef readonly bint started
    cdef readonly bint closed

    def __init__(self, str name):
        self.name = name
        self.port_id = port_by_name(name)
        self.started = False
        self.closed = False

    def driver(self):
        cdef rte_eth_dev_info info
        ret = rte_eth_dev_info_get(self.port_id, &info)
        if ret != 0:
            raise EalError(f"rte_eth_dev_info_get({self.name})", -ret)
        return info.driver_name.decode()

    def setup(self, Mempool pool, int rx_queues=1, int tx_queues=1, int rx_desc=1024,
              int tx_desc=1024, bint promiscuous=True):
        """``rte_eth_dev_configure`` + queue setup + start."""
        cdef rte_eth_conf conf
        cdef uint16_t nrx = rx_desc
        cdef uint16_t ntx = tx_desc
        memset(&conf, 0, sizeof(conf))
        self._check(rte_eth_dev_configure(self.port_id, rx_queues, tx_queues, &conf),
                    "rte_eth_dev_configure")
        self._check(rte_eth_dev_adjust_nb_rx_tx_desc(self.port_id, &nrx, &ntx),
                    "rte_eth_dev_adjust_nb_rx_tx_desc")
        socket = rte_eth_dev_socket_id(self.port_id)
        if socket < 0:
            socket = SOCKET_ID_ANY
        for q in range(rx_queues):
            self._check(rte_eth_rx_queue_setup(self.port_id, q, nrx, socket, NULL, pool.mp),
                        f"rte_eth_rx_queue_setup(queue {q})")
        for q in range(tx_queues):
            self._check(rte_eth_tx_queue_setup(self.port_id, q, ntx, socket, NULL),
                        f"rte_eth_tx_queue_setup(queue {q})")
        self._check(rte_eth_dev_start(self.port_id), "rte_eth_dev_start")
        self.started = True
        if promiscuous:
            # Not every PMD has a promiscuous mode (net_null, net_ring): best effort.
            rte_eth_promiscuous_enable(self.port_id)

    def mac(self):
        cdef rte_ether_addr mac
        self._check(rte_eth_macaddr_get(self.port_id, &mac), "rte_eth_macaddr_get")
        return ":".join(f"{mac.addr_bytes[i]:02x}" for i in range(6))

    def stats(self):
        cdef rte_eth_stats st
        self._check(rte_eth_stats_get(self.port_id, &st), "rte_eth_stats_get")
        return {
            "ipackets": st.ipackets, "opackets": st.opackets,
            "ibytes": st.ibytes, "obytes": st.obytes,
            "imissed": st.imissed, "ierrors": st.ierrors, "oerrors": st.oerrors,
            "rx_nombuf": st.rx_nombuf,
        }

    def rx_queue_count(self, int queue=0):
        """Packets waiting in RX queue ``queue`` (``rte_eth_rx_queue_count``), or
        None if the driver cannot tell (``-ENOTSUP``: net_af_packet, net_pcap,
        net_null, net_ring, net_tap and most virtual devices)."""
        ret = rte_eth_rx_queue_count(self.port_id, queue)
        if ret == -ENOTSUP:
            return None
        self._check(ret, f"rte_eth_rx_queue_count(queue {queue})")
        return ret

    def stop(self):
        if self.started:
            self._check(rte_eth_dev_stop(self.port_id), "rte_eth_dev_stop")
            self.started = False

    def close(self):
        """Stop and close; a net_pcap port flushes its output file here."""
        if self.closed:
            return
        self.stop()
        self._check(rte_eth_dev_close(self.port_id), "rte_eth_dev_close")
        self.closed = True

    def _check(self, int ret, what):
        if ret < 0:
            raise EalError(f"{what} on port {self.name}", -ret)
