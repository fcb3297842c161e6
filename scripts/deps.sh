#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian packages nlsr builds and tests with (run as root, or with sudo present).
set -euo pipefail
# man-db, groff-base and bash-completion: the tests render the man pages and drive the completion;
# slurmctld, slurmd and munge: tests/test_slurm.sh starts a one-node Slurm cluster.
pkgs=(build-essential cmake pkg-config liburing-dev libopenblas-dev liblapacke-dev libzstd-dev
      libcjson-dev clang libclang-rt-14-dev python3 man-db groff-base bash-completion
      slurmctld slurmd munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi
