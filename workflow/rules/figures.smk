# Figures (seaborn PNG) and tables (CSV) from every result, with the paper's published numbers
# overlaid as their own series; `snakemake --report report.html` shows them with captions. The outputs and the
# result kinds they read are those of geofm.plots.registry (FIGURES, TABLES, rule_inputs).
localrules: figures


rule figures:
    input:
        FIGURE_INPUTS,
    output:
        [report(f, caption=f"../report/{Path(f).stem}.rst", category="Figures") for f in FIGURES],
        [report(t, caption="../report/tables.rst", category="Tables") for t in TABLES],
    log:
        f"{RES}/logs/figures.log",
    params:
        cfg=rule_params(config, "figures"),
    shell:
        "geofm figures --config {CFG} > {log} 2>&1"
