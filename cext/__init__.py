"""Cython bindings that drive the DPDK runtime (built against libdpdk)."""
