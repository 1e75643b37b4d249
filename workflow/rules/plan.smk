# `geofm plan`: predicted images/s, step parts, peak memory and node-hours of every profile cell on the
# config's cluster (plan.cluster), plus the study's node-hours. Cheap (seconds on the login node), so local.
# The figures draw its predictions beside the paper's and this project's measurements.
localrules: plan


def perf_model_digest():
    """sha256 (16 hex) of geofm.perf's sources and clusters.yaml: a change of the model or of a cluster's
    published figures reruns the plan, which its config params alone would not."""
    from importlib import resources

    h = hashlib.sha256()
    for f in sorted(resources.files("geofm.perf").iterdir(), key=lambda p: p.name):
        if f.name.endswith((".py", ".yaml")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


rule plan:
    output:
        csv=f"{RES}/plan/plan.csv",
        summary=f"{RES}/plan/summary.json",
    log:
        f"{RES}/logs/plan.log",
    params:
        cfg=rule_params(config, "plan"),
        model=perf_model_digest(),
    shell:
        "geofm plan --config {CFG} --out {output.csv} --summary {output.summary} > {log} 2>&1"
