#!/usr/bin/env bash
# The runs behind the numbers in docs/step_level.md and experiments/step_level.md.
# One SFT is shared: the dpo/stepwise/step_dpo runs reuse the base run's data and SFT checkpoint
# (resume=auto skips finished stages), so they differ only in the preference loss.
#   bash experiments/step_level_runs.sh [OUT_DIR] [tiny|smollm2]
# tiny (default): the tiny model from scratch (+experiment=from_scratch keeps the recipe they were measured
# with), 960 synthetic pairs, then NAT, the failure analysis and the mixture study.
# smollm2: the default model and recipe (SFT 60 x 8, on-policy pairs) in react format at a budget that fits
# a 2-core CPU: 100 eval prompts, 120 sampled prompts, at most 160 pairs, no BFCL; step-wise DPO, then Step-DPO
# and whole-sequence DPO on the stepwise run's data and SFT, each with reward_eval of its SFT (base) and DPO
# (tuned) checkpoints. Add loss names after the recipe to run only those: ... smollm2 step_dpo; `nat` (not in
# the default list) runs NAT with its own SFT on the tagged data, then the default RPO from it.
set -euo pipefail
out="${1:-runs/step_level}"
recipe="${2:-tiny}"

reuse_sft() {  # reuse_sft FROM TO: TO starts with FROM's data, SFT checkpoint and baseline evaluation
  mkdir -p "$2/stages" "$2/checkpoints"
  cp -r "$1/data" "$2/"
  cp -r "$1/checkpoints/sft" "$2/checkpoints/"
  cp "$1"/stages/{generate,sft,evaluate_baseline}.json "$2/stages/"
  python - "$1/stages/timings.json" "$2/stages/timings.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
keep = ("generate", "sft", "evaluate_baseline")
json.dump({k: {s: v for s, v in t[k].items() if s in keep} for k in t}, open(sys.argv[2], "w"))
PY
  cp "$1"/{eval,predictions,verdicts}_baseline.* "$2/" 2>/dev/null || true
}

if [ "$recipe" = smollm2 ]; then
  common=(data.format=react data.n_eval=100 evaluate.base=false evaluate.bfcl=false dpo.sample_prompts=120 dpo.max_pairs=160)
  losses=("${@:3}")
  [ ${#losses[@]} -gt 0 ] || losses=(stepwise step_dpo dpo)
  for loss in "${losses[@]}"; do
    if [ "$loss" = nat ]; then  # NAT trains its own SFT (tagged negatives), then the default RPO on it
      python -m agent_align run_dir="$out/nat" data.negatives=nat "${common[@]}"
      python -m agent_align stage=reward_eval run_dir="$out/nat" data.negatives=nat "${common[@]}"
      continue
    fi
    if [ "$loss" != stepwise ]; then
      [ -d "$out/stepwise/checkpoints/sft" ] || { echo "error: $out/stepwise has no SFT checkpoint: run stepwise first" >&2; exit 2; }
      [ -d "$out/$loss/checkpoints/sft" ] || reuse_sft "$out/stepwise" "$out/$loss"
    fi
    python -m agent_align run_dir="$out/$loss" loss="$loss" "${common[@]}"
    python -m agent_align stage=reward_eval run_dir="$out/$loss" "${common[@]}"
  done
  exit 0
fi
common=(+experiment=from_scratch data.format=react data.n_train=3000 data.n_eval=200 data.procedural_tools=0 dpo.max_pairs=960 hardware.eval_batch_size=64)
python -m agent_align run_dir="$out/dpo" loss=dpo "${common[@]}"
for loss in stepwise step_dpo; do
  reuse_sft "$out/dpo" "$out/$loss"
  python -m agent_align run_dir="$out/$loss" loss="$loss" "${common[@]}"
  python -m agent_align stage=score_steps run_dir="$out/$loss" "${common[@]}"
  python -m agent_align stage=reward_eval run_dir="$out/$loss" reward_eval.limit=200 "${common[@]}"
done
python -m agent_align stage=reward_eval run_dir="$out/dpo" reward_eval.limit=200 "${common[@]}"
python -m agent_align run_dir="$out/nat" data.negatives=nat loss=dpo "${common[@]}"
python -m agent_align stage=analyze run_dir="$out/dpo" "${common[@]}"
# data-mixture study (18 jobs on the default recipe: see experiments/mixture_study.md); it writes
# its table and plot into the sweep directory when the last job ends
python -m agent_align -m +experiment=mixture_study
