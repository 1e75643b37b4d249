# Cut scenes into tiles (rasterio windows) / pack classification images, into uint8 shards plus a
# GeoParquet manifest and per-band statistics of the training split. Image folders and archives (e.g.
# ~1M MillionAID images) are decoded by parallel processes, one per CPU of the job, and resumed per shard
# (geofm.data.parallel_shards): on a cluster this is a batch job (one node, scheduler.tile_runtime_min)
# that is retried once and then continues from the shards it finished.
rule tile:
    input:
        tile_inputs,
    output:
        stats=f"{RES}/tiles/{{dataset}}/stats.json",
        manifest=f"{RES}/tiles/{{dataset}}/manifest.parquet",
    log:
        f"{RES}/logs/tile/{{dataset}}.log",
    retries: TILE_RETRIES
    params:
        cfg=lambda wc: rule_params(config, "tile", dataset=wc.dataset),
    resources:
        runtime=config["scheduler"]["tile_runtime_min"],
        nodes=config["scheduler"]["tile_nodes"],
    shell:
        "geofm tile --config {CFG} --dataset {wildcards.dataset} > {log} 2>&1"
