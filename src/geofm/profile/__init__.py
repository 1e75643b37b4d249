"""Throughput and memory profiling of the pretraining step per model × strategy × node count."""
