"""Figures and tables of the study (``run_figures``), paper overlays from ``reference/``, and the
confusion-matrix writer used by the evaluate stage. Heavy imports (matplotlib, seaborn) happen in the
submodules."""
