#!/usr/bin/env bash
# Profile every shipped pair (label-free, budget 1%, granularity 2), then evaluate each chosen plan
# on held-out rows. Writes profiles/SENDER__RECEIVER.json (+ plots) and bench/results/eval_*.json.
#   bash bench/profile_all.sh            # ~1.5-2 h on a 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DS=.venv/bin/droidspeak
PAIRS=${PAIRS:-"smollm2-135m-instruct:smollm2-qa smollm2-135m-instruct:smollm2-code smollm2-135m-instruct:smollm2-toolcall smollm2-toolcall:smollm2-code"}
N_PROFILE=${N_PROFILE:-10}
N_EVAL=${N_EVAL:-16}
for pair in $PAIRS; do
  s=${pair%%:*}; r=${pair##*:}
  if [ "${SKIP_PROFILE:-0}" != 1 ]; then
    $DS profile --sender "$s" --receiver "$r" --n "$N_PROFILE" --out "profiles/${s}__${r}.json"
  fi
done
for pair in $PAIRS; do
  s=${pair%%:*}; r=${pair##*:}
  $DS eval --sender "$s" --receiver "$r" --plan "profile:profiles/${s}__${r}.json" --n "$N_EVAL" \
    --out "bench/results/eval_${s}__${r}.json"
done
