#!/usr/bin/env bash
# Profile every shipped pair (label-free, budget 1%, granularity 2, 10 calibration rows of 1-2K
# tokens), then evaluate each chosen plan on held-out rows of about 4K tokens.
# Writes profiles/SENDER__RECEIVER.json (+ plots) and bench/results/eval_SENDER__RECEIVER.json.
#   bash bench/profile_all.sh            # ~1 h on a 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DS=.venv/bin/droidspeak
PAIRS=${PAIRS:-"smollm2-135m-instruct:smollm2-qa smollm2-135m-instruct:smollm2-code smollm2-135m-instruct:smollm2-toolcall smollm2-toolcall:smollm2-code"}
if [ "${SKIP_PROFILE:-0}" != 1 ]; then
  for pair in $PAIRS; do
    s=${pair%%:*}; r=${pair##*:}
    $DS profile --sender "$s" --receiver "$r" --n "${N_PROFILE:-10}" --out "profiles/${s}__${r}.json"
  done
fi
for pair in $PAIRS; do
  s=${pair%%:*}; r=${pair##*:}
  $DS eval --sender "$s" --receiver "$r" --plan "profile:profiles/${s}__${r}.json" --n "${N_EVAL:-10}" \
    --min-tokens 3500 --max-tokens 4500 --out "bench/results/eval_${s}__${r}.json"
done
