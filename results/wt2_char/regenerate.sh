#!/usr/bin/env bash
# Rebuild this folder from the two Figure 2 grids on WikiText-2 characters (issue 11 item 2):
#   python -m experiments.data prepare text --source ../shared/data/wikitext-2 --level char
#   bash slurm/local/up.sh        # the real one-node SLURM (or --executor local --max-parallel 2)
#   python -m slurm.submit experiments/cpu/fig2_left_wt2.yaml  --cluster local     # 5 points x 3 seeds
#   for seed in 0 1; do python -m slurm.submit experiments/cpu/fig2_right_wt2.yaml --cluster local --only train.seed=$seed; done
#   for run in all-attn single-head attn-split; do
#       python -m slurm.submit experiments/cpu/fig2_right_wt2.yaml --cluster local --only name=$run-seed=2; done
#   results/wt2_char/regenerate.sh [RUNS_ROOT]          (default runs/)
# (These are equivalent to the submissions made, which came in several rounds: results/wt2_char/README.md.)
# Copies every evaluated run directory (config, provenance, status, attempts, metrics, eval; no
# checkpoints; the all-attention N=256 runs the two grids share are copied into both), then
# collects, draws Figure 2 and writes the variant reports and the claims from those copies.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/env.sh
src=${1:-runs}
out=results/wt2_char
for grid in fig2_left_wt2 fig2_right_wt2; do
    rm -rf "$out/runs/$grid"
    mkdir -p "$out/runs/$grid"
    for run in "$src/$grid"/*/; do
        [[ -f $run/eval.json ]] || continue
        dest="$out/runs/$grid/$(basename "$run")"
        mkdir -p "$dest"
        cp "$run"/{config.yaml,provenance.json,status.json,attempts.jsonl,metrics.jsonl,eval.json} "$dest"/
    done
done
"$PY" -m analysis.collect "$out/runs" --out "$out"
"$PY" -m analysis.figure2 "$out/runs" --out-dir "$out" --no-published
"$PY" -m analysis.report "$out/runs/fig2_left_wt2" --baseline transformer --format markdown > "$out/report_left.md"
"$PY" -m analysis.report "$out/runs/fig2_right_wt2" --baseline all_attention --format markdown > "$out/report_right.md"
"$PY" -m analysis.report "$out/runs" --claims > "$out/claims.md"
echo "written: $out/{runs.csv,curves.csv,figure2.png,figure2.pdf,figure2.csv,report_left.md,report_right.md,claims.md}"
