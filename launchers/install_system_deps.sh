#!/usr/bin/env bash
# System packages for the integration tests: a one-node SLURM (slurm-wlm) and its auth daemon (munge).
#   bash launchers/install_system_deps.sh     # no-op (well under a second) when both are installed
# Called by `launchers/setup.sh test`. Needs root and apt (Debian/Ubuntu); elsewhere it says what to
# install and exits 0, so the SLURM tests report what is missing instead of this script failing CI.
set -euo pipefail
need=()
command -v slurmctld >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need+=(munge)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_deps: missing ${need[*]}; install them with your package manager (needs root + apt here)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# `apt-get update` only when the package lists are absent (fresh container); it is the slow part.
# (stale lists: the first install fails to fetch; refresh them and try once more)
if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then apt-get update -qq; fi
if ! apt-get install -y -qq "${need[@]}" >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "install_system_deps: installed ${need[*]}"
