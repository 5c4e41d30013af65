#!/usr/bin/env bash
# Rebuild this folder from the anchor pair on WikiText-2 characters (issue 11 item 1):
#   python -m experiments.data prepare text --source ../shared/data/wikitext-2 --level char
#   python -m slurm.submit experiments/cpu/anchor_wt2.yaml --executor local --max-parallel 2 --wait
#   results/anchor_wt2/regenerate.sh [RUNS_ROOT]          (default runs/)
# Copies every run directory (config, provenance, status, attempts, metrics, eval; no checkpoints),
# then collects them and writes the comparison and the claims from those copies.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/env.sh
src=${1:-runs}
out=results/anchor_wt2
rm -rf "$out/runs/anchor_wt2"
mkdir -p "$out/runs/anchor_wt2"
for run in "$src/anchor_wt2"/*/; do
    [[ -f $run/eval.json ]] || continue
    dest="$out/runs/anchor_wt2/$(basename "$run")"
    mkdir -p "$dest"
    cp "$run"/{config.yaml,provenance.json,status.json,attempts.jsonl,metrics.jsonl,eval.json} "$dest"/
done
"$PY" -m analysis.collect "$out/runs" --out "$out"
"$PY" -m analysis.report "$out/runs" --baseline transformer --format markdown > "$out/comparison.md"
"$PY" -m analysis.report "$out/runs" --claims > "$out/claims.md"
echo "written: $out/{runs.csv,curves.csv,comparison.md,claims.md}"
