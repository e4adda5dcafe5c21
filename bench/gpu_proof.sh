#!/usr/bin/env bash
# The proof on a GPU worker: every GPU check and benchmark of the project in one run.
#
#   bash bench/gpu_proof.sh OUT                     # on a machine with an NVIDIA GPU, from the project root
#   GPU_PROOF_QUICK=1 bash bench/gpu_proof.sh OUT   # every step on tiny sizes: a dry run that works on a CPU
#
# Each step has a time limit, all within PROOF_SECONDS (default 600), and writes its results under OUT as
# soon as it ends (so a run cut short still leaves what finished):
#   1. python -m pytest -m gpu                                   -> pytest_gpu.txt
#   2. dvc repro --keep-going of the default pipeline in a fresh copy -> repro.json (total, per stage and kind),
#      (train.device and encode.device: auto, so CUDA)              repro_outputs.tar.gz (metrics, results.md, dvc.lock)
#   3. bench/encode_throughput.py: ViT-B-32 (random init) and the offline pair; pixels, JPEG files
#      (decoded by PIL on the CPU, or by nvJPEG on the GPU), captions; the batch size auto chose -> encode.json
#   4. bench/search_at_scale.py: 1M and 10M x 64 bits, the CPU kernel, the CUDA path and FAISS  -> search.json
#   5. python flows/pipeline.py with tiny overrides and --max-parallel 2 in another fresh copy   -> flow.log
# Steps 1, 3, 4 and 5 run one after another beside step 2, each half on its own half of the cores
# (taskset), so that the whole proof fits in about ten minutes; proof.log says when each ran.
set -u
OUT=$(realpath -m "${1:?usage: bash bench/gpu_proof.sh OUT}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
QUICK=${GPU_PROOF_QUICK:-0}
WORK=$(mktemp -d)
mkdir -p "$OUT"
END=$(( $(date +%s) + ${PROOF_SECONDS:-600} ))  # every step ends by then (PROOF_SECONDS: the whole proof's budget)
limit() { local left=$(( END - $(date +%s) - 15 )); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }
export HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/proof.log"; }

CPUS=$(nproc)
HALF=$(( CPUS / 2 > 0 ? CPUS / 2 : 1 ))
REPRO_CPUS="0-$(( HALF - 1 ))"
BENCH_CPUS="$(( CPUS > 1 ? HALF : 0 ))-$(( CPUS - 1 ))"
pinned() { local cpus=$1; shift; if command -v taskset >/dev/null; then taskset -c "$cpus" "$@"; else "$@"; fi; }

fresh_copy() {  # the project as it is here (no data, no caches, no git history), in a new git repository
  local dest=$1
  mkdir -p "$dest"
  tar -C "$ROOT" --exclude=./.git --exclude=./.gpu --exclude=./.venv --exclude=./.ci-venv --exclude=./data \
      --exclude=./.dvc/cache --exclude=./.dvc/tmp --exclude='*/__pycache__' --exclude=./.pytest_cache -cf - . | tar -C "$dest" -xf -
  if command -v git >/dev/null; then
    (cd "$dest" && git init -q -b main && git config user.name "gpu proof" && git config user.email "gpu@example.com" \
      && git add -A && git commit -qm "fresh copy" && "$PY" -m dvc config core.analytics false)
  else
    (cd "$dest" && "$PY" -m dvc config core.no_scm true && "$PY" -m dvc config core.analytics false)
  fi
}

shrink() {  # GPU_PROOF_QUICK: the copy's params.yaml at tiny sizes
  "$PY" - "$1/params.yaml" <<'EOF'
import sys, yaml
path = sys.argv[1]
params = yaml.safe_load(open(path))
params["dataset"]["builtin"] = {"size": 240, "image_size": 64}
params["dataset"]["split"] = {"query": 40, "train": 120}
params["encode"]["offline"] = {"image_size": 64}
params["train"]["methods"], params["train"]["bits"] = ["lsh", "djsrh", "dcmht", "clipmh"], [16]
for settings in params["methods"].values():
    for key, tiny in (("hidden", 32), ("width", 16), ("epochs", 2), ("batch_size", 16)):
        if key in settings:
            settings[key] = tiny
params["evaluate"]["top_r"] = [1, 5, 10]
yaml.safe_dump(params, open(path, "w"), sort_keys=False)
EOF
}

log "machine: $CPUS CPUs; repro on CPUs $REPRO_CPUS, the rest on $BENCH_CPUS; quick=$QUICK"
{ nvidia-smi 2>&1 || true; "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >> "$OUT/proof.log"

# 2. the default pipeline from a fresh copy, in the background
fresh_copy "$WORK/repro"
[ "$QUICK" = 1 ] && shrink "$WORK/repro"
log "2. dvc repro in $WORK/repro: started"
( pinned "$REPRO_CPUS" timeout "$(limit 3600)" "$PY" "$ROOT/bench/repro_times.py" --project "$WORK/repro" \
      --out "$OUT/repro.json" --log "$WORK/repro.log" -- --keep-going > "$WORK/repro.stdout" 2>&1
  echo "exit $?" >> "$WORK/repro.stdout"
  tar -C "$WORK/repro" -czf "$OUT/repro_outputs.tar.gz" metrics reports/results.md dvc.lock 2>/dev/null
  log "2. dvc repro: $(tail -2 "$WORK/repro.stdout" | tr '\n' ' ')" ) &
REPRO=$!

# 1. the GPU tests
log "1. pytest -m gpu"
pinned "$BENCH_CPUS" timeout "$(limit 300)" "$PY" -m pytest -m gpu -rA -q -p no:cacheprovider "$ROOT/tests" > "$OUT/pytest_gpu.txt" 2>&1
log "1. pytest -m gpu: exit $? ($(tail -1 "$OUT/pytest_gpu.txt"))"

# 3. encoding throughput
if [ "$QUICK" = 1 ]; then ENCODE_ARGS=(--images 64 --encoders offline --loaders 2 --repeats 1); else
  ENCODE_ARGS=(--images 8192 --encoders vit-b-32 offline --loaders 0 6 --repeats 2); fi
log "3. encode throughput ${ENCODE_ARGS[*]}"
pinned "$BENCH_CPUS" timeout "$(limit 420)" "$PY" "$ROOT/bench/encode_throughput.py" "${ENCODE_ARGS[@]}" --dask-workers \
  --out "$OUT/encode.json" > "$WORK/encode.stdout" 2>&1
log "3. encode throughput: exit $?"; cat "$WORK/encode.stdout" >> "$OUT/proof.log"

# 4. the search engine: CPU kernel, CUDA path and FAISS
if [ "$QUICK" = 1 ]; then SEARCH_ARGS=(--items 20000 --k 10 --batch 50 --single-queries 5 --repeats 1); else
  SEARCH_ARGS=(--items 1000000 10000000 --k 10 100 --single-queries 30 --repeats 2); fi
log "4. search ${SEARCH_ARGS[*]}"
OMP_WAIT_POLICY=PASSIVE NUMBA_NUM_THREADS=$(( CPUS - HALF > 0 ? CPUS - HALF : 1 )) pinned "$BENCH_CPUS" timeout "$(limit 420)" \
  "$PY" "$ROOT/bench/search_at_scale.py" "${SEARCH_ARGS[@]}" --bits 64 --out "$OUT/search.json" > "$WORK/search.stdout" 2>&1
log "4. search: exit $?"; cat "$WORK/search.stdout" >> "$OUT/proof.log"

# 5. one run of the Prefect flow, tiny, two stages at a time
log "5. flows/pipeline.py"
if command -v git >/dev/null; then
  fresh_copy "$WORK/flow"
  OVERRIDES=(-S dataset.builtin.size=400 -S dataset.builtin.image_size=64 -S "dataset.split={query: 80, train: 200}"
             -S encode.offline.image_size=64 -S "train.methods=[lsh, djsrh, dcmht]" -S "train.bits=[16]"
             -S methods.djsrh.epochs=3 -S methods.dcmht.epochs=5 -S "evaluate.top_r=[1, 10, 50]")
  (cd "$WORK/flow" && PREFECT_HOME="$WORK/prefect-home" pinned "$BENCH_CPUS" timeout "$(limit 400)" "$PY" flows/pipeline.py \
     --max-parallel 2 "${OVERRIDES[@]}" > "$OUT/flow.log" 2>&1; echo "exit $?" >> "$OUT/flow.log"
   log "5. flow: $(tail -1 "$OUT/flow.log"); $(grep -o 'saved as experiment [^ ]*' "$OUT/flow.log");" \
       "GPU leases: $(grep -c 'runs with CUDA_VISIBLE_DEVICES' "$OUT/flow.log"); in dvc exp show:" \
       "$("$PY" -m dvc exp show --no-pager --json 2>/dev/null | grep -c "$(grep -o 'saved as experiment [^ ]*' "$OUT/flow.log" | cut -d' ' -f4)")")
else
  log "5. flow: skipped, this machine has no git (experiments need it)"
fi

wait $REPRO
log "done"
