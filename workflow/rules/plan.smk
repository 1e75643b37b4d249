# `geofm plan`: predicted images/s, step parts, peak memory and node-hours of every profile cell on the
# config's cluster (plan.cluster), plus the study's node-hours. Cheap (seconds on the login node), so local.
# The figures draw its predictions beside the paper's and this project's measurements.
localrules: plan


rule plan:
    output:
        csv=f"{RES}/plan/plan.csv",
        summary=f"{RES}/plan/summary.json",
    log:
        f"{RES}/logs/plan.log",
    params:
        cfg=rule_params(config, "plan"),
    shell:
        "geofm plan --config {CFG} --out {output.csv} --summary {output.summary} > {log} 2>&1"
