"""Benchmarks: training throughput, encoder latency, FLOPs and memory, normalised by matmul."""
