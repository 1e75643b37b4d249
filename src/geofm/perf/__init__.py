"""Plan before you spend: memory, collective-cost and performance models of MAE pretraining per model ×
strategy × node count on a cluster described as data (``clusters.yaml``), calibrated on single-node figures
only. Shared by the DAG's feasibility filter, the profiler's pre-allocation check and ``geofm plan``.

- ``workload``: the step as FSDP units (parameters, FLOPs, activations) from the model registry;
- ``memory``: peak memory per GPU and the feasibility verdict;
- ``comm``: latency-bandwidth cost per collective and algorithm (ring, tree) on the cluster's links;
- ``model``: step time with per-unit overlap of compute and communication;
- ``cluster``: cluster descriptions; ``calibrate``: the few free parameters from 1-node cells;
- ``plan``: the plan table, node-hours of the study, validation against the paper.
"""
