#!/usr/bin/env bash
# The GPU checks of issue 12, prepared to run in one or two calls of the device tool (a lent GPU
# machine without network, torch already there). Never run by `make test`.
#
#   here:    make gpu-carry      # gpu-carry/: the pure-Python wheels the device's image lacks
#                                # (mlxtend, submitit) and Fashion-MNIST (Debian's package), 31 MB
#   device:  bash bench/gpu_session.sh tests grid seeds scaling   (carry: ["gpu-carry"], timeout_s: 450)
#            bash bench/gpu_session.sh baselines                  (the same carry, what time is left)
#   A 15-minute session (2026-11-26, an H200) spent 160 s on the first call and 150 s on the second,
#   plus about 60 s per machine start; `streams` (under 1 min), `compile` (about 2 min) and
#   `teacher` (50 s) are the open ones. Still open after it: the issue's H100 number (the run
#   tool's kind nvidia-h100-x1), CNN packs on streams (`tests`: the cnn-pack cases, then `streams`)
#   and the 5-seed grid's 30 s line (46.8 s on the H200, its teachers most of it). Next: `tests streams grid seeds` in one call (about 6 min), then `compile`.
#
# Stages (each bounded by `timeout`, each writing $OUT/<stage>.txt; a failing stage does not stop
# the next):
#   tests      graph against eager on CUDA (tests/test_graphs.py), the written-out backward on CUDA
#   grid       `kdsweep run` of the whole reference grid on full Fashion-MNIST (teacher, scratch, 24
#              students, 12 epochs, process start included), CUDA graphs off then on; the two
#              results tables compared, and where the time went
#   seeds      the same grid with 5 seeds (packs across seeds), CUDA graphs on, -j 5 (SEED_JOBS);
#              TEACHER_SETTINGS='precision = "bf16"; channels_last = true' adds a [teacher] table
#   teacher    bench/epoch_ways.py: the teacher's epoch in float32, channels-last, bf16; its kernels
#   compile    bench/epoch_ways.py: eager, kd's graphs, torch.compile(mode="reduce-overhead")
#   streams    bench/epoch_ways.py: the teacher alone against five CNNs packed (seeds 0-4, each
#              member on a CUDA stream of its own), eager and graphs: whether packing the 5-seed
#              grid's teachers pays (it does if the pack's epoch is well under 5x the teacher's)
#   startup    what a process pays before its first step: kdsweep's CLI, torch's import, CUDA, data
#   baselines  bench/kd_grid.py: kd-sweep, the reference loop and one process per point, side by
#              side (the two naive sides sampled: 1 student each, scaled, as the output says)
#   scaling    bench/pack_scaling.py: student-samples/s and memory against pack size
set -u
OUT=${OUT:-/tmp/kd-gpu-out}
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
PY=${PY:-python3}
SITE=/tmp/kd-gpu-site
if [ -d gpu-carry/wheels ] && [ ! -d "$SITE" ]; then
    $PY -m pip install -q --no-index --no-deps --target "$SITE" gpu-carry/wheels/*.whl >> "$OUT/versions.txt" 2>&1
fi
export PYTHONPATH="$HERE:$SITE" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
DATA=${DATA:-$HERE/gpu-carry/data}
SWEEP=${SWEEP:-sweep/examples/reference-fashion-mnist.toml}

stage() {  # stage NAME SECONDS COMMAND...: run it bounded, its output in $OUT/NAME.txt, a line here
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s: $(tail -n 1 "$OUT/$name.txt")"
}

grid() {  # the end-to-end number: kdsweep run on the example sweep, CUDA graphs $1 (0 or 1)
    local graphs=$1 results=/tmp/kd-gpu-results-$1
    rm -rf "$results"
    local t0=$EPOCHREALTIME
    KDSWEEP_CUDA_GRAPHS=$graphs $PY -m sweep.cli -q run "$SWEEP" --results "$results" --data-root "$DATA" || return
    echo "kdsweep run $SWEEP, CUDA graphs $graphs: $(awk "BEGIN {print $EPOCHREALTIME - $t0}") s end to end"
    $PY -m sweep.cli -q collect "$SWEEP" --results "$results" > /dev/null
}

compare() {  # the two runs' results: the same accuracies (float tolerance); where the time went
    $PY - <<'EOF'
import glob
import pandas as pd
runs = {g: pd.read_parquet(glob.glob(f"/tmp/kd-gpu-results-{g}/*/results.parquet")[0]).set_index("name")
        for g in (0, 1)}
a, b = runs[0], runs[1]
diff = (a["test_accuracy"] - b.loc[a.index, "test_accuracy"]).abs()
for g, r in runs.items():
    e = pd.read_parquet(glob.glob(f"/tmp/kd-gpu-results-{g}/*/epochs.parquet")[0])
    per = e.groupby("method")["seconds"].median()
    print(f"graphs {g}: wall_seconds by method (median) {r.groupby('method')['wall_seconds'].median().round(2).to_dict()}; "
          f"epoch seconds by method (median) {per.round(3).to_dict()}; accuracy {r['test_accuracy'].round(4).to_dict()}")
print(f"{len(a)} jobs; largest accuracy difference graphs vs eager: {diff.max():.4f} ({diff.idxmax()})")
EOF
}

seeds() {  # the 5-seed grid (packs across seeds: 5 teachers, a pack of 5 scratch and one of 120 KD students)
    local file=/tmp/kd-gpu-5seeds.toml results=/tmp/kd-gpu-results-5seeds
    sed -e 's/^seed = \[0\]/seed = [0, 1, 2, 3, 4]/' -e 's/^name = "\(.*\)"/name = "\1-5seeds"/' "$SWEEP" > "$file"
    if [ -n "${TEACHER_SETTINGS:-}" ]; then  # e.g. 'precision = "bf16"; channels_last = true'
        printf '[teacher]\n%s\n' "${TEACHER_SETTINGS//; /$'\n'}" >> "$file"
        echo "teacher settings: $TEACHER_SETTINGS"
    fi
    rm -rf "$results"
    $PY -m sweep.cli plan "$file" | tail -n 3
    local t0=$EPOCHREALTIME
    KDSWEEP_CUDA_GRAPHS=1 $PY -m sweep.cli -q run "$file" -j "${SEED_JOBS:-5}" --results "$results" --data-root "$DATA" || return
    echo "kdsweep run, 5 seeds, -j ${SEED_JOBS:-5}, CUDA graphs 1: $(awk "BEGIN {print $EPOCHREALTIME - $t0}") s end to end"
    $PY -m sweep.cli -q collect "$file" --results "$results" > /dev/null
    $PY -c "
import glob, pandas as pd
r = pd.read_parquet(glob.glob('$results/*/results.parquet')[0])
print(len(r), 'jobs; wall_seconds by method (median):', r.groupby('method')['wall_seconds'].median().round(2).to_dict())
print(r[r.method == 'kd'].groupby(['alpha', 'temperature'])['test_accuracy'].agg(['mean', 'std', 'count']).head(6))
"
}

startup() {  # what a process pays before its first step: the CLI, torch, CUDA, the data
    local t0=$EPOCHREALTIME
    $PY -m sweep.cli --help > /dev/null
    echo "kdsweep --help: $(awk "BEGIN {print $EPOCHREALTIME - $t0}") s"
    $PY -c "
import time
t = time.perf_counter()
import torch
t1 = time.perf_counter(); torch.zeros(1, device='cuda'); torch.cuda.synchronize(); t2 = time.perf_counter()
from kd import data
d = data.load('fashion-mnist', '$DATA'); t3 = time.perf_counter()
print(f'import torch {t1 - t:.2f} s, CUDA init {t2 - t1:.2f} s, Fashion-MNIST load {t3 - t2:.2f} s')
"
}

export -f grid compare seeds startup
export PY DATA SWEEP
[ $# -gt 0 ] || set -- tests streams grid seeds
nvidia-smi >> "$OUT/versions.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$OUT/versions.txt" 2>&1
tail -n 1 "$OUT/versions.txt"
for s in "$@"; do
    case $s in
        tests) stage tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_pack.py \
                   -k "cuda or written or replayed" ;;
        grid) stage grid-eager 120 bash -c "grid 0"; stage grid-graphs 120 bash -c "grid 1"
              stage grid-compare 30 bash -c compare ;;
        seeds) stage seeds 150 bash -c seeds ;;
        startup) stage startup 60 bash -c startup ;;
        compile) stage compile 300 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda ;;
        streams) stage streams 150 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda \
                     --units teacher cnn-pack --ways eager graphs ;;
        teacher) stage teacher 120 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda \
                     --units teacher --ways graphs channels-last bf16-channels-last --profile ;;
        baselines) stage baselines 560 env KDSWEEP_CUDA_GRAPHS=1 $PY bench/kd_grid.py --dataset fashion-mnist \
                       --data-root "$DATA" --epochs 12 --full-grid --device cuda --naive-sample 1 --reference-sample 1 ;;
        scaling) stage scaling 120 $PY bench/pack_scaling.py --device cuda --sizes 1 8 24 120 480 ;;
        *) echo "unknown stage '$s' (tests, grid, seeds, startup, streams, teacher, compile, baselines, scaling)"; exit 2 ;;
    esac
done
