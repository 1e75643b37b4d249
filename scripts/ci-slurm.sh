#!/usr/bin/env bash
# ci-slurm.sh - CI entry for the Slurm tests: bring up the two-node test cluster (n1, n2 + slurmdbd;
# installs slurm-wlm/munge/mariadb via apt-get when missing, needs root) and run tests/slurm.
#   scripts/ci-slurm.sh [extra pytest args]
# Env: PYTHON (default: python from PATH, e.g. the project's venv), SLURM_CI_STOP=1 stops the daemons
# afterwards. Takes ~2 min on a warm machine (+ apt on a fresh one).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-python}
if [ "$(id -u)" -eq 0 ]; then
    scripts/start-test-slurm.sh
elif command -v sudo >/dev/null 2>&1; then
    sudo -n scripts/start-test-slurm.sh
else
    echo "ci-slurm.sh: need root (or passwordless sudo) to start the test Slurm" >&2
    exit 1
fi
rc=0
# -rs: say why a test was skipped; the Slurm test must not be skipped here
timeout -s INT 900 "$PYTHON" -m pytest tests/slurm -v -rs -p no:cacheprovider "$@" | tee /tmp/ci-slurm-pytest.log || rc=$?
if grep -q "SKIPPED" /tmp/ci-slurm-pytest.log; then
    echo "ci-slurm.sh: a Slurm test was skipped although the cluster was started" >&2
    [ "$rc" -ne 0 ] || rc=1
fi
if [ "${SLURM_CI_STOP:-0}" = 1 ]; then scripts/start-test-slurm.sh stop || true; fi
exit "$rc"
