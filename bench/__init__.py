"""Benchmarks: hitlflow against LangGraph on the same human-in-the-loop workload.

Run with ``make bench`` (see bench/README.md).
"""
