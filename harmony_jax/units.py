"""Byte units of the memory figures the planners, the loader and the benchmarks print."""

GiB = 1024**3
