#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job end to end on a bundled example: builds nlsr, makes a small synthetic
# base / aligned / fine-tuned triple with `nlsr synth`, realigns the fine-tuned model with
# `nlsr run`, and shows the report. Output goes to ${OUT:-out/example}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
nlsr=./build/nlsr
out=${OUT:-out/example}
rm -rf "$out"
mkdir -p "$out"
for role in base aligned finetuned; do
  "$nlsr" synth --preset tiny --role "$role" --seed 7 --out "$out/$role" -q
done
"$nlsr" run --base "$out/base" --aligned "$out/aligned" --finetuned "$out/finetuned" \
  --out "$out/realigned" --report "$out/report.json"
echo
echo "realigned checkpoint: $out/realigned"
echo "report:               $out/report.json"
"$nlsr" inspect "$out/realigned" | tail -n 3
