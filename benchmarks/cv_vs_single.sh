#!/usr/bin/env bash
# K folds of M/K minutes against one model of M minutes, both scored on the same held-out cases:
#   1. `attnunet train --folds K --time-budget M` (the budget covers every fold), its cross-validation
#      summary (out-of-fold Dice, HD95, surface Dice per class; O/cv/cv_summary.csv), post-processing choice;
#   2. `attnunet infer --model O/cv` (the folds' probabilities averaged, the chosen post-processing);
#   3. `attnunet train --time-budget M` (one model, 80/20 train/validation), `attnunet infer` with it;
#   4. `attnunet evaluate` of both predictions on the held-out labels, one summary line each.
#
#   bash benchmarks/cv_vs_single.sh TRAIN_DATA TEST_IMAGES TEST_LABELS OUT [MINUTES (60) [FOLDS (5)]]
#   bash benchmarks/cv_vs_single.sh hipp/train hipp/test/imagesTr hipp/test/labelsTr cv60
#
# TRAIN_OPTIONS adds `attnunet train` options to both runs (e.g. TRAIN_OPTIONS="--device cuda").
# Run it alone on the machine: each `train` fits its epochs to the time it measures.
set -euo pipefail
if (( $# < 4 )); then
    sed -n 2,13p "$0"
    exit 2
fi
train_data=$1 test_images=$2 test_labels=$3 out=$4 minutes=${5:-60} folds=${6:-5}
read -r -a options <<< "${TRAIN_OPTIONS:-}"
if [[ -e "$out" ]]; then
    echo "cv_vs_single: $out exists; give a new folder (nothing is overwritten)" >&2
    exit 2
fi
mkdir -p "$out"

stamp() { date -u +%FT%TZ; }
run_timed() {  # name, command...: the command's wall-clock seconds in $out/times.tsv
    local name=$1 start
    shift
    start=$(date +%s)
    "$@"
    printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - start ))" "$(stamp)" >> "$out/times.tsv"
}

printf 'step\tseconds\tended\n' > "$out/times.tsv"
run_timed cv_train attnunet train --data "$train_data" --output "$out/cv" --folds "$folds" \
    --time-budget "$minutes" --no-track --no-progress "${options[@]}"
run_timed cv_infer attnunet infer "$test_images" --model "$out/cv" --output "$out/cv_pred" --no-progress
run_timed single_train attnunet train --data "$train_data" --output "$out/single" \
    --time-budget "$minutes" --no-track --no-progress "${options[@]}"
run_timed single_infer attnunet infer "$test_images" --model "$out/single/checkpoints/best.pt" \
    --output "$out/single_pred" --no-progress
for name in cv single; do
    attnunet evaluate --predictions "$out/${name}_pred" --labels "$test_labels" --output "$out/${name}_eval"
done
cat "$out/times.tsv"
