# cython: language_level=3
from cext.dpdk cimport rte_lpm


cdef class LpmTable:
    cdef rte_lpm *lpm
    cdef readonly str name
    cdef readonly unsigned rules
