# Cut scenes into tiles (rasterio windows) / pack classification images, into uint8 shards plus a
# GeoParquet manifest and per-band statistics of the training split.
rule tile:
    input:
        tile_inputs,
    output:
        stats=f"{RES}/tiles/{{dataset}}/stats.json",
        manifest=f"{RES}/tiles/{{dataset}}/manifest.parquet",
    log:
        f"{RES}/logs/tile/{{dataset}}.log",
    params:
        cfg=lambda wc: rule_params(config, "tile", dataset=wc.dataset),
    resources:
        runtime=60,
    shell:
        "geofm tile --config {CFG} --dataset {wildcards.dataset} > {log} 2>&1"
