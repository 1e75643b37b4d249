"""Distributed launch, FSDP2 parallelisation under the paper's strategy names, checkpointing."""
