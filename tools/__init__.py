"""Quadrant's tools: lab-in-a-box, traffic generator, benchmarks, simulator."""
