"""The one figure registry (geofm.plots.registry): its functions take what it says they read, the readers load
every input kind it names, and the Snakemake `figures` rule writes exactly its outputs and waits for exactly
its result kinds."""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from geofm.plots import figures as F
from geofm.plots import tables as T
from geofm.plots.readers import load_inputs
from geofm.plots.registry import FIGURES, INPUTS, TABLES, figure_paths, rule_inputs, table_paths

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", [*FIGURES.values(), *TABLES.values()], ids=lambda s: s.name)
def test_each_function_takes_exactly_what_the_registry_passes(spec):
    fn = getattr(F if spec.kind == "figure" else T, spec.function)
    params = inspect.signature(fn).parameters
    passed = set(spec.reads) | ({"path"} if spec.kind == "figure" else set())
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= passed <= set(params), f"{spec.name}: {spec.function}{inspect.signature(fn)} vs {passed}"
    assert set(spec.reads.values()) <= set(INPUTS)


def test_readers_load_every_input_kind(tmp_path):
    data = load_inputs({"results": str(tmp_path), "profile": {}}, reference_dir=tmp_path)
    assert set(data) == set(INPUTS)
    assert all(d.empty for d in data.values())


def test_rule_inputs_are_the_result_kinds_read():
    kinds = {INPUTS[k].rule_input for o in [*FIGURES.values(), *TABLES.values()] for k in o.reads.values()}
    assert set(rule_inputs()) == kinds - {None} == {"eval", "pretrain", "profile", "plan"}


def test_no_rule_restates_a_figure_or_table_name():
    """The rules take the names from the registry; a name typed into a rule file would drift from it."""
    names = [*FIGURES, *TABLES]
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        # as a file name, or as a quoted name where that is not a common word ("profile" is also a rule)
        typed = [n for n in names if re.search(rf"""\b{n}\.(png|csv)\b""", text)
                 or ("_" in n and re.search(rf"""["']{n}["']""", text))]
        assert not typed, f"{smk.name} names {typed}: take them from geofm.plots.registry"


# the result files of each rule-input kind, as the demo's DAG names them
KIND_PATTERNS = {"eval": r"results/eval/[a-z]+/\w+/[\w.]+\.json", "pretrain": r"results/pretrain/\w+/metrics\.jsonl",
                 "profile": r"results/profile/\w+/\w+/\d+n(\.[a-z]\w*)?\.json", "plan": r"results/plan/plan\.csv"}


@pytest.mark.slow
def test_the_figures_rule_writes_the_registry_outputs_and_reads_its_kinds(tmp_path):
    """Dry run of the demo (in an empty folder): the `figures` job's outputs are the registry's, its inputs
    are result files of the registry's kinds, one or more of each."""
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile",
                          str(ROOT / "Snakefile"), "--configfile", str(ROOT / "config" / "demo.yaml"),
                          "--directory", str(tmp_path), "figures"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    block = re.search(r"^rule figures:\n((?:    .*\n)+)", res.stdout, re.M)
    assert block, res.stdout[-2000:]
    fields = dict(re.match(r"    (\w[\w ]*): (.*)", ln).groups() for ln in block.group(1).splitlines()
                  if re.match(r"    \w[\w ]*: ", ln))
    outputs = set(fields["output"].split(", "))
    assert outputs == set(figure_paths("results")) | set(table_paths("results"))
    inputs = fields["input"].split(", ")
    kinds = {k: [f for f in inputs if re.fullmatch(p, f)] for k, p in KIND_PATTERNS.items()}
    assert {k for k, files in kinds.items() if files} == set(rule_inputs())
    assert sum(map(len, kinds.values())) == len(inputs)  # nothing else
