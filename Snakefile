# GeoFM-Scale: the whole study as one DAG.
#   snakemake --profile profiles/local                      # the embedded demo (config/demo.yaml)
#   snakemake --profile profiles/frontier --configfile config/config.yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from geofm.config import ConfigError, expand_dirs, schema_path
from geofm.config import validate as cross_check

min_version("9.0")


# The embedded demo is the default; a config file given on the command line or by a profile replaces it
# (instead of being merged over it, so that no demo dataset or variant leaks into another study).
if not workflow.overwrite_configfiles:

    configfile: "config/demo.yaml"



# workflow/schemas/config.schema.yaml links to this file, which ships inside the geofm package
validate(config, str(schema_path()))
# cross-references the schema cannot express (datasets named by other keys, patch sizes, variant cells)
try:
    cross_check(config, "config")
    expand_dirs(config, "config")  # results/resources may name a variable ($GEOFM_ORION, profiles/frontier)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tiles.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        FIGURES,
        TABLES,
    default_target: True
