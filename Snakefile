# GeoFM-Scale: the whole study as one DAG.
#   snakemake --profile profiles/local                      # the embedded demo (config/demo.yaml)
#   snakemake --profile profiles/frontier --configfile config/config.yaml
import sys

from snakemake.utils import min_version

from geofm.config import ConfigError, type_overrides
from geofm.config import validate as validate_config

min_version("9.17")  # callable rule priorities (workflow/rules/evaluate.smk), snakemake PR 3253, v9.17.0


# The embedded demo is the default; a config file given on the command line or by a profile replaces it
# (instead of being merged over it, so that no demo dataset or variant leaks into another study). Values
# given with --config are merged over that file key by key (nested mappings too).
if not workflow.overwrite_configfiles:

    configfile: "config/demo.yaml"


# Snakemake parses nested --config values with YAML's BaseLoader (as strings): type them by the schema
# first, so that `--config 'pretrain={"steps": 50}'` means the integer 50. Then validate against the schema
# (workflow/schemas/config.schema.yaml links to the copy inside the geofm package) and the cross-references
# it cannot express; a bad key or value stops here, before any job, with at most three lines naming it.
try:
    type_overrides(config, workflow.config_settings.config)
    _checked = validate_config(config, "config")
except ConfigError as exc:
    sys.exit(str(exc))
config.update(_checked)  # with the schema's defaults filled in


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tiles.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        FIGURES,
        TABLES,
    default_target: True
