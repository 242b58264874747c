# cython: language_level=3
"""DPDK 22.11 declarations shared by the cext modules (only what they use).

Many of these (``rte_eth_rx_burst``, ``rte_pktmbuf_free``, ``rte_lpm_lookup``,
``rte_rdtsc``) are ``static inline`` in DPDK's headers: Cython emits calls to
them and the C compiler inlines them, which is why every module is compiled
with ``pkg-config --cflags libdpdk``.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "rte_errno.h":
    int rte_errno
    const char *rte_strerror(int errnum)

cdef extern from "rte_lcore.h":
    unsigned rte_lcore_id() nogil
    int rte_socket_id() nogil
    int SOCKET_ID_ANY

cdef extern from "rte_cycles.h":
    uint64_t rte_rdtsc() nogil
    uint64_t rte_get_tsc_hz() nogil

cdef extern from "rte_prefetch.h":
    void rte_prefetch0(const void *p) nogil

cdef extern from "rte_mempool.h":
    cdef struct rte_mempool:
        pass
    void rte_mempool_free(rte_mempool *mp)
    unsigned rte_mempool_avail_count(const rte_mempool *mp) nogil
    unsigned rte_mempool_in_use_count(const rte_mempool *mp) nogil

cdef extern from "rte_mbuf.h":
    cdef struct rte_mbuf:
        void *buf_addr
        uint16_t data_off
        uint16_t nb_segs
        uint16_t port
        uint32_t pkt_len
        uint16_t data_len
        uint16_t buf_len
    int RTE_MBUF_DEFAULT_BUF_SIZE
    int RTE_PKTMBUF_HEADROOM
    rte_mempool *rte_pktmbuf_pool_create(const char *name, unsigned n, unsigned cache_size,
                                         uint16_t priv_size, uint16_t data_room_size,
                                         int socket_id)
    void rte_pktmbuf_free(rte_mbuf *m) nogil
    void rte_pktmbuf_free_bulk(rte_mbuf **mbufs, unsigned int count) nogil
    uint16_t rte_pktmbuf_tailroom(const rte_mbuf *m) nogil

cdef extern from "rte_ether.h":
    cdef struct rte_ether_addr:
        uint8_t addr_bytes[6]

cdef extern from "rte_ethdev.h":
    cdef struct rte_eth_rxmode:
        uint32_t mtu
    cdef struct rte_eth_txmode:
        uint64_t offloads
    cdef struct rte_eth_conf:
        rte_eth_rxmode rxmode
        rte_eth_txmode txmode
    cdef struct rte_eth_dev_info:
        const char *driver_name
        uint16_t max_rx_queues
        uint16_t max_tx_queues
    cdef struct rte_eth_stats:
        uint64_t ipackets
        uint64_t opackets
        uint64_t ibytes
        uint64_t obytes
        uint64_t imissed
        uint64_t ierrors
        uint64_t oerrors
        uint64_t rx_nombuf

    int rte_eth_dev_get_port_by_name(const char *name, uint16_t *port_id)
    int rte_eth_dev_is_valid_port(uint16_t port_id)
    int rte_eth_dev_info_get(uint16_t port_id, rte_eth_dev_info *dev_info)
    int rte_eth_dev_configure(uint16_t port_id, uint16_t nb_rx_queue, uint16_t nb_tx_queue,
                              const rte_eth_conf *eth_conf)
    int rte_eth_dev_adjust_nb_rx_tx_desc(uint16_t port_id, uint16_t *nb_rx_desc,
                                         uint16_t *nb_tx_desc)
    int rte_eth_rx_queue_setup(uint16_t port_id, uint16_t rx_queue_id, uint16_t nb_rx_desc,
                               unsigned int socket_id, const void *rx_conf,
                               rte_mempool *mb_pool)
    int rte_eth_tx_queue_setup(uint16_t port_id, uint16_t tx_queue_id, uint16_t nb_tx_desc,
                               unsigned int socket_id, const void *tx_conf)
    int rte_eth_dev_start(uint16_t port_id)
    int rte_eth_dev_stop(uint16_t port_id)
    int rte_eth_dev_close(uint16_t port_id)
    int rte_eth_dev_socket_id(uint16_t port_id)
    int rte_eth_promiscuous_enable(uint16_t port_id)
    int rte_eth_macaddr_get(uint16_t port_id, rte_ether_addr *mac_addr)
    int rte_eth_stats_get(uint16_t port_id, rte_eth_stats *stats)
    uint16_t rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, rte_mbuf **rx_pkts,
                              const uint16_t nb_pkts) nogil
    uint16_t rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, rte_mbuf **tx_pkts,
                              uint16_t nb_pkts) nogil
    int rte_eth_rx_queue_count(uint16_t port_id, uint16_t queue_id) nogil

cdef extern from "rte_dev.h":
    int rte_dev_probe(const char *devargs)

cdef extern from "rte_lpm.h":
    cdef struct rte_lpm:
        pass
    cdef struct rte_lpm_config:
        uint32_t max_rules
        uint32_t number_tbl8s
        int flags
    rte_lpm *rte_lpm_create(const char *name, int socket_id, const rte_lpm_config *config)
    void rte_lpm_free(rte_lpm *lpm)
    int rte_lpm_add(rte_lpm *lpm, uint32_t ip, uint8_t depth, uint32_t next_hop)
    int rte_lpm_lookup(const rte_lpm *lpm, uint32_t ip, uint32_t *next_hop) nogil

cdef extern from "rte_acl.h":
    cdef struct rte_acl_ctx:
        pass
    void rte_acl_free(rte_acl_ctx *ctx)
    int rte_acl_classify(const rte_acl_ctx *ctx, const uint8_t **data, uint32_t *results,
                         uint32_t num, uint32_t categories) nogil
