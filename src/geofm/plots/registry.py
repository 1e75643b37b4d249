"""The one list of what the figures stage writes: every figure and table by name, the function that makes it
and the inputs it reads. ``workflow/rules/common.smk`` builds the ``figures`` rule's outputs and inputs from
it and ``geofm.plots.figures.run_figures`` draws from it, so a figure is added or renamed here only.

Pure data (no pandas, no matplotlib): the Snakefile imports it while it parses.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Input:
    """One kind of data the figures read; ``rule_input`` names the result files the ``figures`` rule waits
    for (``None``: package data, ``geofm/plots/reference/*.csv``, which the rule's params fingerprint)."""

    what: str
    rule_input: str | None


# input kind -> what it is. The readers (geofm.plots.readers) load each kind into one data frame.
INPUTS: Mapping[str, Input] = MappingProxyType({
    "eval": Input("{results}/eval/{protocol}/{model}/{dataset}.json (evaluate stage)", "eval"),
    "pretrain": Input("{results}/pretrain/{model}/metrics.jsonl (pretrain stage)", "pretrain"),
    "profile": Input("{results}/profile/{model}/{strategy}/{nodes}n[.{variant}].json (profile stage), plus a row "
                     "per base-grid cell the memory model keeps out of the DAG", "profile"),
    "profile_base": Input("the base variant's rows of `profile` (no variants)", "profile"),
    "plan": Input("{results}/plan/plan.csv (geofm plan)", "plan"),
    "paper_weak_scaling": Input("reference/frontier_weak_scaling_ips.csv (the paper)", None),
    "paper_peak_memory": Input("reference/frontier_peak_memory_gb.csv (the paper)", None),
    "paper_prefetch": Input("reference/frontier_prefetch_vit5b_8nodes_ips.csv (the paper)", None),
})


@dataclass(frozen=True)
class Output:
    """A figure (``figures/{name}.png``, drawn by ``geofm.plots.figures.<function>``) or a table
    (``tables/{name}.csv``, computed by ``geofm.plots.tables.<function>``). ``reads`` maps each parameter of
    the function to the input kind passed to it; a figure function also takes ``path``."""

    name: str
    kind: str  # figure | table
    function: str
    reads: Mapping[str, str]

    @property
    def file(self) -> str:
        return f"{self.name}.png" if self.kind == "figure" else f"{self.name}.csv"

    @property
    def folder(self) -> str:
        return "figures" if self.kind == "figure" else "tables"


def _figure(name: str, function: str, **reads: str) -> Output:
    return Output(name, "figure", function, MappingProxyType(reads))


def _table(name: str, function: str, **reads: str) -> Output:
    return Output(name, "table", function, MappingProxyType(reads))


FIGURES: Mapping[str, Output] = MappingProxyType({f.name: f for f in (
    _figure("accuracy_vs_size", "plot_accuracy_vs_size", ev="eval"),
    _figure("loss_curves", "plot_loss_curves", metrics="pretrain"),
    _figure("throughput_per_strategy", "plot_throughput_per_strategy", prof="profile_base"),
    _figure("peak_memory", "plot_peak_memory", prof="profile_base"),
    _figure("paper_weak_scaling", "plot_paper_weak_scaling", paper_ws="paper_weak_scaling", prof="profile_base"),
    _figure("paper_peak_memory", "plot_paper_peak_memory", paper_mem="paper_peak_memory", prof="profile_base"),
    _figure("paper_prefetch_vit5b", "plot_paper_prefetch", paper_pf="paper_prefetch", prof="profile_base"),
    _figure("prefetch_comparison", "plot_prefetch_comparison", paper_pf="paper_prefetch", prof="profile"),
    _figure("compile_ac_comparison", "plot_compile_ac_comparison", prof="profile"),
    _figure("plan_weak_scaling", "plot_paper_weak_scaling", paper_ws="paper_weak_scaling", prof="profile_base",
            plan="plan"),
)})

TABLES: Mapping[str, Output] = MappingProxyType({t.name: t for t in (
    _table("accuracy", "accuracy_table", ev="eval"),
    _table("profile", "profile_table", prof="profile"),
    _table("best_strategy", "best_strategy", prof="profile"),
    _table("weak_scaling_efficiency", "weak_scaling_efficiency", paper_ws="paper_weak_scaling", prof="profile"),
)})


def outputs() -> list[Output]:
    """Tables first, then figures (the order the stage writes them)."""
    return [*TABLES.values(), *FIGURES.values()]


def figure_paths(results) -> list[str]:
    return [f"{results}/figures/{f.file}" for f in FIGURES.values()]


def table_paths(results) -> list[str]:
    return [f"{results}/tables/{t.file}" for t in TABLES.values()]


def rule_inputs() -> list[str]:
    """The result kinds the ``figures`` rule must wait for (``eval``, ``pretrain``, ``profile``, ``plan``), in
    first-use order."""
    kinds = (INPUTS[k].rule_input for o in (*FIGURES.values(), *TABLES.values()) for k in o.reads.values())
    return list(dict.fromkeys(k for k in kinds if k))
