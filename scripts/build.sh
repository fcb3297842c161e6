#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Configures and builds nlsr into ${BUILD_DIR:-build}; extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
dir=${BUILD_DIR:-build}
cmake -S . -B "$dir" -DNLSR_WERROR=ON -DNLSR_TEST_HOOKS=ON "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)"
