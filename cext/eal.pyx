# cython: language_level=3
"""DPDK Environment Abstraction Layer: initialise, list ports, clean up.

The EAL can be initialised once per process; a second :func:`init` raises
:class:`EalError` with DPDK's own message (``EALREADY``).
"""

from libc.stdlib cimport free, malloc
from libc.stdint cimport uint16_t, uint8_t


cdef extern from "rte_errno.h":
    int rte_errno
    const char *rte_strerror(int errnum)

cdef extern from "rte_eal.h":
    int rte_eal_init(int argc, char **argv)
    int rte_eal_cleanup()
    const char *rte_eal_get_runtime_dir()

cdef extern from "rte_ether.h":
    cdef struct rte_ether_addr:
        uint8_t addr_bytes[6]

cdef extern from "rte_ethdev.h":
    uint16_t rte_eth_dev_count_avail()
    int rte_eth_dev_is_valid_port(uint16_t port_id)
    int rte_eth_dev_get_name_by_port(uint16_t port_id, char *name)
    int rte_eth_macaddr_get(uint16_t port_id, rte_ether_addr *mac_addr)
    int RTE_MAX_ETHPORTS
    int RTE_ETH_NAME_MAX_LEN


class EalError(RuntimeError):
    """A DPDK call failed; the message is DPDK's ``rte_strerror`` text."""

    def __init__(self, what, errnum):
        self.errnum = errnum
        msg = rte_strerror(errnum).decode("utf-8", "replace")
        super().__init__(f"{what}: {msg} (rte_errno {errnum})")


_initialised = False


def init(args):
    """Run ``rte_eal_init`` with ``args`` (a list of strings, program name first).

    Returns the number of arguments the EAL consumed.
    """
    global _initialised
    cdef int argc = len(args)
    cdef char **argv = <char **>malloc((argc + 1) * sizeof(char *))
    if argv == NULL:
        raise MemoryError()
    encoded = [a.encode() for a in args]
    try:
        for i, a in enumerate(encoded):
            argv[i] = a
        argv[argc] = NULL
        ret = rte_eal_init(argc, argv)
    finally:
        free(argv)
    if ret < 0:
        raise EalError("rte_eal_init", rte_errno)
    _initialised = True
    return ret


def initialised():
    return _initialised


def cleanup():
    """Release the EAL's resources (``rte_eal_cleanup``)."""
    global _initialised
    if not _initialised:
        return
    ret = rte_eal_cleanup()
    if ret < 0:
        raise EalError("rte_eal_cleanup", -ret)
    _initialised = False


def runtime_dir():
    """The EAL's runtime directory (``/var/run/dpdk/<file-prefix>`` for root)."""
    return rte_eal_get_runtime_dir().decode()


def remove_runtime_dir(path):
    """Remove the files a primary process left in its runtime directory, after
    :func:`cleanup` (DPDK keeps them for secondary processes; with a unique
    ``--file-prefix`` per process nobody else uses them)."""
    import os
    import shutil

    base = os.path.basename(path.rstrip("/"))
    if not base or base in ("dpdk", "rte"):
        raise ValueError(f"refusing to remove {path!r}: not a per-prefix runtime directory")
    shutil.rmtree(path, ignore_errors=True)


def ports():
    """The available ethdev ports as ``[{"port_id", "name", "mac"}]``."""
    cdef char name[64]
    cdef rte_ether_addr mac
    out = []
    for port_id in range(RTE_MAX_ETHPORTS):
        if not rte_eth_dev_is_valid_port(port_id):
            continue
        if rte_eth_dev_get_name_by_port(port_id, name) != 0:
            continue
        rte_eth_macaddr_get(port_id, &mac)
        out.append({
            "port_id": port_id,
            "name": name.decode(),
            "mac": ":".join(f"{mac.addr_bytes[i]:02x}" for i in range(6)),
        })
    return out


def port_count():
    return rte_eth_dev_count_avail()
