"""Figures and tables of the study and the confusion-matrix writer used by the evaluate stage.

- ``registry``: the one list of figures and tables (name, function, inputs read); the Snakemake rule reads it
- ``readers``: result files and the paper's reference tables (``reference/``) into data frames
- ``tables``: pure pandas (the CSV tables and the series each figure draws)
- ``draw``: drawing helpers; ``figures``: the figures and the stage's entry point, ``run_figures``
- ``names``: series, model and strategy names and orders (from the model and strategy registries)
- ``confusion``: the evaluate stage's confusion matrix (CSV + heat map)

Heavy imports (matplotlib, seaborn) happen in ``draw``, ``figures`` and ``confusion`` only."""
