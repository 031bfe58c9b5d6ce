#!/usr/bin/env bash
# The GPU checks of issue 12, prepared to run in one or two calls of the device tool (a lent GPU
# machine without network, torch already there). Never run by `make test`.
#
#   here:    make gpu-carry      # gpu-carry/: the pure-Python wheels the device's image lacks
#                                # (mlxtend, submitit) and Fashion-MNIST (Debian's package), 31 MB
#   device:  bash bench/gpu_session.sh grid seeds streams tests startup baselines   (carry: ["gpu-carry"])
#   A 15-minute session (2026-11-26, an H200) spent 160 s on the first call and 150 s on the second
#   (baselines), plus about 60 s per machine start. The next (an H100, kind nvidia-h100-x1 named)
#   ran `grid seeds streams tests startup baselines` in 330 s, `tests ways gridj seeds` in 185 s
#   and `jit gridj seeds` in 85 s, about 30 s per start: 700 s of its 900. Still open: `compile`
#   (about 2 min) and the 5-seed grid's 30 s (37.0 s, the teachers' convolutions and max-pools).
#   The third (an H100 again) ran `tests ways seeds` (139 s), `seeds kdprofile gridj` (112 s),
#   `tests seeds gridj` (129 s), `seeds gridj` + seeds -j 1 (111 s) and seeds three times (132 s),
#   about 30 s per start: 785 s of its 900. Its kd.pool review fixes ran on no GPU.
#   The fourth (2026-11-27, H100s, each call a fresh machine, about 30 s a start): `tests seeds seeds
#   gridj` (186 s), `spy startup` (49 s: where a run's time goes, every process sampled), `seeds
#   seeds seeds d2h compile` (192 s), `seeds seeds seeds gridj` (125 s): 685 s of its 900.
#   The fifth (2026-11-27, an H100) ran `seeds seeds seeds gridj` in 134 s (one call, about 30 s to
#   start) on the code with the teachers' logits cache written after their results and the early
#   student's wait for its teacher's job lock: 5 seeds 32.8 s (fresh machine), 28.9, 29.1 s; the
#   reference grid 13.0 s (-j 1), 12.0 s (-j 2).
#
# Stages (each bounded by `timeout`, each writing $OUT/<stage>.txt; a failing stage does not stop
# the next):
#   tests      graph against eager on CUDA (tests/test_graphs.py), the written-out backward on CUDA
#   grid       `kdsweep run` of the whole reference grid on full Fashion-MNIST (teacher, scratch, 24
#              students, 12 epochs, process start included), CUDA graphs on then off; the two
#              results tables compared, and where the time went; then graphs with -j 2
#   seeds      the same grid with 5 seeds (packs across seeds, the teachers' too), CUDA graphs on
#              (SEED_GRAPHS; eagerly again where they fail), -j 2 (SEED_JOBS); its timeline;
#              TEACHER_SETTINGS='precision = "bf16"; channels_last = true' adds a [teacher] table
#   gridj      the grid with graphs alone, -j 1 then -j 2 (no eager run, no comparison)
#   ways       bench/epoch_ways.py: the teacher and five CNNs packed, with graphs: kd.pool's fused ReLU
#              and max-pool and channels-last inputs, each alone, or torch's ops; the kernels
#   teacher    bench/epoch_ways.py: the teacher's epoch in float32, channels-last, bf16; its kernels
#   compile    bench/epoch_ways.py: eager, kd's graphs, torch.compile(mode="reduce-overhead")
#   streams    bench/epoch_ways.py: the teacher alone against five CNNs packed (seeds 0-4, each
#              member on a CUDA stream of its own), eager and graphs: whether packing the 5-seed
#              grid's teachers pays (it does if the pack's epoch is well under 5x the teacher's)
#   jit        the fused dropout mask's compile time, torch's kernel cache empty, then filled
#   startup    what a process pays before its first step: kdsweep's CLI, torch's import, CUDA, data
#   spy        seeds, sampled by py-spy (gpu-carry has its wheel): $OUT/seeds.speedscope.json
#   d2h        the 120 students' weights read to host memory: .cpu(), pinned buffers, one pinned buffer
#   kdprofile  120 MLP students packed: their epoch, and its kernels (torch.profiler)
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
    local name=$1 base=$1 limit=$2 t0=$SECONDS n=2
    shift 2
    while [ -e "$OUT/$name.txt" ]; do  # a stage run twice in one call keeps both outputs
        name=$base-$n; n=$((n + 1))
    done
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s: $(tail -n 1 "$OUT/$name.txt")"
}

grid() {  # the end-to-end number: kdsweep run on the example sweep, CUDA graphs $1 (0 or 1), -j ${2:-1}
    local graphs=$1 jobs=${2:-1} results=/tmp/kd-gpu-results-$1
    [ "$jobs" = 1 ] || results=$results-j$jobs
    rm -rf "$results"
    local t0=$EPOCHREALTIME
    KDSWEEP_CUDA_GRAPHS=$graphs $PY -m sweep.cli -q run "$SWEEP" -j "$jobs" --results "$results" --data-root "$DATA" || return
    echo "kdsweep run $SWEEP, CUDA graphs $graphs, -j $jobs: $(awk "BEGIN {print $EPOCHREALTIME - $t0}") s end to end"
    $PY -m sweep.cli -q collect "$SWEEP" --results "$results" > /dev/null
    $PY -c "
import glob, pandas as pd
r = pd.read_parquet(glob.glob('$results/*/results.parquet')[0])
e = pd.read_parquet(glob.glob('$results/*/epochs.parquet')[0])
print('wall_seconds by method (median):', r.groupby('method')['wall_seconds'].median().round(2).to_dict(),
      '; first epoch:', e[e.epoch == 1].groupby('method')['seconds'].median().round(3).to_dict(),
      '; later epochs (median):', e[e.epoch > 1].groupby('method')['seconds'].median().round(3).to_dict())
"
}

jit() {  # the fused dropout mask's compile (NVRTC), with torch's kernel cache empty, then filled
    local cache=/tmp/kd-jit-cache
    rm -rf "$cache"
    for when in cold warm; do
        PYTORCH_KERNEL_CACHE_PATH=$cache $PY -c "
import time, torch
from kd import rng
k = rng.keys_tensor([0, 1], 0, device='cuda'); torch.cuda.synchronize()
t0 = time.perf_counter(); rng.at_least(k, (256, 10816), 0.5); torch.cuda.synchronize(); t1 = time.perf_counter()
rng.at_least(k, (256, 10816), 0.5); torch.cuda.synchronize(); t2 = time.perf_counter()
print('$when kernel cache: first fused mask %.3f s, the next %.3f ms; %s' % (t1 - t0, (t2 - t1) * 1e3, rng.FUSED))
"
    done
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

seeds() {  # the 5-seed grid (packs across seeds: on a GPU a pack of 5 teachers, one of 5 scratch and one of 120 KD students)
    local file=/tmp/kd-gpu-5seeds.toml results=/tmp/kd-gpu-results-5seeds
    sed -e 's/^seed = \[0\]/seed = [0, 1, 2, 3, 4]/' -e 's/^name = "\(.*\)"/name = "\1-5seeds"/' "$SWEEP" > "$file"
    if [ -n "${TEACHER_SETTINGS:-}" ]; then  # e.g. 'precision = "bf16"; channels_last = true'
        printf '[teacher]\n%s\n' "${TEACHER_SETTINGS//; /$'\n'}" >> "$file"
        echo "teacher settings: $TEACHER_SETTINGS"
    fi
    rm -rf "$results"
    $PY -m sweep.cli plan "$file" | tail -n 3
    local t0=$EPOCHREALTIME
    echo "started at $(date +%H:%M:%S.%N | cut -c1-12)"
    local spy=()  # SPY=1: the whole run sampled by py-spy (every process, idle time too), for where the time went
    [ -n "${SPY:-}" ] && spy=("$SITE/bin/py-spy" record --subprocesses --idle --rate 100 --format speedscope
                               -o "$OUT/seeds.speedscope.json" --)
    KDSWEEP_CUDA_GRAPHS=${SEED_GRAPHS:-1} "${spy[@]}" $PY -m sweep.cli -q run "$file" -j "${SEED_JOBS:-2}" --results "$results" --data-root "$DATA" || return
    echo "kdsweep run, 5 seeds, -j ${SEED_JOBS:-2}, CUDA graphs ${SEED_GRAPHS:-1}: $(awk "BEGIN {print $EPOCHREALTIME - $t0}") s end to end"
    $PY - "$results" "$t0" <<'EOF'
import json, sys
from pathlib import Path
# when each job's files were written, in seconds from the run's start (their mtimes): where the time went
t0 = float(sys.argv[2])
by = {}
for d in Path(sys.argv[1]).glob("*/jobs/*"):
    method = json.loads((d / "config.json").read_text()).get("config", {}).get("method", "?")
    for f in d.iterdir():
        if f.name in ("result.json", "model.pt") or f.name.startswith("logits-"):
            by.setdefault((method, f.name.split("-")[0]), []).append(f.stat().st_mtime - t0)
for (method, name), ts in sorted(by.items(), key=lambda kv: min(kv[1])):
    print(f"timeline: {method:8s} {name:12s} {len(ts):4d} files written from {min(ts):6.2f} s to {max(ts):6.2f} s")
for method in ("teacher", "kd"):  # one job's log of each unit, without its epochs but the first and last
    d = next(d for d in sorted(Path(sys.argv[1]).glob("*/jobs/*"))
             if json.loads((d / "config.json").read_text())["config"]["method"] == method)
    lines = (d / "log").read_text().splitlines()
    if len(lines) == 2 and lines[1].startswith("(packed with"):  # the pack's log: its first member's
        lines = Path(lines[1].split("see ", 1)[1].rstrip(")")).read_text().splitlines()
    epochs = [i for i, l in enumerate(lines) if " epoch " in l]
    print("\n".join(f"log {method}: {l}" for i, l in enumerate(lines) if i not in epochs[1:-1]))
EOF
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

d2h() {  # the 120 reference students' stacked weights (600 MB) read to host memory: the ways
    $PY - <<'EOF2'
import time, torch
shapes = [(120, 784, 784), (120, 784), (120, 784, 784), (120, 784), (120, 10, 784), (120, 10)]
dev = [torch.randn(s, device="cuda") for s in shapes]
torch.cuda.synchronize()
def cpu():
    return [t.cpu() for t in dev]
def pinned():
    out = [torch.empty(t.shape, pin_memory=True) for t in dev]
    for o, t in zip(out, dev):
        o.copy_(t, non_blocking=True)
    torch.cuda.synchronize()
    return out
def one_pinned():  # one pinned buffer for all, views into it
    n = sum(t.numel() for t in dev)
    flat = torch.empty(n, pin_memory=True)
    out, at = [], 0
    for t in dev:
        o = flat[at:at + t.numel()].view(t.shape); at += t.numel()
        o.copy_(t, non_blocking=True); out.append(o)
    torch.cuda.synchronize()
    return out
def clones(host):
    return [[h[i].clone() for h in host] for i in range(120)]
for name, f in [("cpu", cpu), ("pinned", pinned), ("one pinned buffer", one_pinned)] * 2:
    t0 = time.perf_counter(); host = f(); t1 = time.perf_counter(); c = clones(host); t2 = time.perf_counter()
    print(f"{name:18s} read {t1 - t0:.3f} s, 120 members' copies {t2 - t1:.3f} s")
    del host, c
EOF2
}

export -f grid compare seeds startup jit d2h
export PY DATA SWEEP OUT SITE
[ $# -gt 0 ] || set -- tests streams grid seeds
nvidia-smi >> "$OUT/versions.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$OUT/versions.txt" 2>&1
tail -n 1 "$OUT/versions.txt"
for s in "$@"; do
    case $s in
        tests) stage tests 200 $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_pack.py tests/test_rng.py tests/test_pool.py \
                   -k "cuda or written or replayed" ;;
        grid) stage grid-graphs 120 bash -c "grid 1"; stage grid-eager 120 bash -c "grid 0"
              stage grid-compare 30 bash -c compare; stage grid-graphs-j2 120 bash -c "grid 1 2" ;;
        gridj) stage grid-graphs 120 bash -c "grid 1"; stage grid-graphs-j2 120 bash -c "grid 1 2" ;;
        ways) stage ways 150 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda \
                  --units teacher cnn-pack --ways graphs graphs-torch-cnn graphs-fused-pool graphs-cl-input --profile ;;
        seeds) stage seeds 150 bash -c seeds
               if ! grep -q "s end to end" "$OUT/seeds.txt"; then  # graphs failed: the eager number, at least
                   SEED_GRAPHS=0 stage seeds-eager 150 bash -c seeds
               fi ;;
        spy) stage spy 150 env SPY=1 bash -c seeds ;;
        d2h) stage d2h 60 bash -c d2h ;;
        startup) stage startup 60 bash -c startup ;;
        kdprofile) stage kdprofile 120 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda \
                       --units students-120 --ways graphs --epochs 2 --profile --profile-unit students-120 ;;
        jit) stage jit 60 bash -c jit ;;
        compile) stage compile 300 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda ;;
        streams) stage streams 150 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda \
                     --units teacher cnn-pack --ways eager graphs ;;
        teacher) stage teacher 120 $PY bench/epoch_ways.py --dataset fashion-mnist --data-root "$DATA" --device cuda \
                     --units teacher --ways graphs channels-last bf16-channels-last --profile ;;
        baselines) stage baselines 240 env KDSWEEP_CUDA_GRAPHS=1 $PY bench/kd_grid.py --dataset fashion-mnist \
                       --data-root "$DATA" --epochs 12 --full-grid --device cuda --naive-sample 1 --reference-sample 1 ;;
        scaling) stage scaling 120 $PY bench/pack_scaling.py --device cuda --sizes 1 8 24 120 480 ;;
        *) echo "unknown stage '$s' (tests, grid, gridj, ways, seeds, jit, startup, kdprofile, streams, teacher, compile, baselines, scaling)"; exit 2 ;;
    esac
done
