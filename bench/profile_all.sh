#!/usr/bin/env bash
# Every shipped pair's profile, and what the variants are worth:
#  1. profiled pairs (label-free, budget 1%, granularity 2, calibration rows of 1-2K tokens), then each
#     chosen plan evaluated on held-out rows of about 4K tokens;
#  2. cache-compatible pairs (activated LoRA, LoRA on the top layers): the plan the weights prove
#     exact, written without calibrating;
#  3. each task's variants (LoRA, activated, top:20) against the base on the same held-out rows.
# Writes profiles/SENDER__RECEIVER.json (+ plots), bench/results/eval_*.json and variants_*.json.
#   bash bench/profile_all.sh            # hours on a 2-core CPU; PAIRS=... / SKIP_PROFILE=1 / SKIP_VARIANTS=1 narrow it
set -euo pipefail
cd "$(dirname "$0")/.."
DS=.venv/bin/droidspeak
B=smollm2-135m-instruct
PAIRS=${PAIRS:-"$B:smollm2-qa $B:smollm2-code $B:smollm2-toolcall smollm2-toolcall:smollm2-code $B:smollm2-code-lora $B:smollm2-toolcall-lora $B:smollm2-qa-q16"}
EXACT=${EXACT:-"$B:smollm2-qa-alora $B:smollm2-code-alora $B:smollm2-toolcall-alora $B:smollm2-qa-top20 $B:smollm2-code-top20 $B:smollm2-toolcall-top20 $B:smollm2-toolcall-alora-s150"}
if [ "${SKIP_PROFILE:-0}" != 1 ]; then
  for pair in $PAIRS; do
    s=${pair%%:*}; r=${pair##*:}
    $DS profile --sender "$s" --receiver "$r" --n "${N_PROFILE:-8}" --max-minutes "${MAX_MINUTES:-40}" \
      --out "profiles/${s}__${r}.json"
  done
fi
shipped() { [ -f "adapters/$1/droidspeak.json" ] || { echo "skip $1: not shipped (train it: droidspeak variants train ...)" >&2; return 1; }; }
for pair in $EXACT; do
  s=${pair%%:*}; r=${pair##*:}
  shipped "$r" || continue
  $DS profile --sender "$s" --receiver "$r" --out "profiles/${s}__${r}.json"
done
if [ "${SKIP_EVAL:-0}" != 1 ]; then
  for pair in $PAIRS; do
    s=${pair%%:*}; r=${pair##*:}
    $DS eval --sender "$s" --receiver "$r" --plan "profile:profiles/${s}__${r}.json" --n "${N_EVAL:-8}" \
      --min-tokens 3500 --max-tokens 4500 --out "bench/results/eval_${s}__${r}.json"
  done
fi
if [ "${SKIP_VARIANTS:-0}" != 1 ]; then
  for task in qa code toolcall; do
    names=$(for v in smollm2-$task smollm2-$task-alora smollm2-$task-top20; do shipped "$v" && echo "$v"; done)
    $DS variants eval $names --n "${N_VARIANTS:-30}" \
      --out "bench/results/variants_smollm2-$task.json"
  done
fi
