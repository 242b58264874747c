"""Benchmarks: each runs its baseline side by side, prints a table, writes JSON."""
