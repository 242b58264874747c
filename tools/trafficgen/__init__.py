"""The traffic generator: stamped flows from a source namespace, counted at a sink.

Every packet carries a stamp (flow id, sequence number, send time) in the
first bytes of its L4 payload, so the sink counts loss, reordering,
duplicates and one-way latency per flow.  See docs/traffic.rst.
"""
