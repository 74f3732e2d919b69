#!/usr/bin/env bash
# kfjax on an accelerator, in one run: the train step of every trainable method in float32 and bfloat16,
# the CT projector (batch 32 of 256² images at 256 views: target 50,000 projections/s on an H100-class GPU)
# and DRRs at 200² (target 2,000/s), as JSON, then the "GPU (kfjax bench)" section of benchmarks/README.md.
#
#   benchmarks/gpu.sh [OUT_DIR]          # JSON files into OUT_DIR (default $KFJAX_BENCH_OUT, else runs/bench)
#
# Installs nothing: run it in an environment where `python -m kfjax` works (with jax[cuda] for a GPU).
# Settings (environment variables):
#   KFJAX_BENCH_SIZE     full | cpu | tiny. full: default settings of each method and the target workloads
#                        (sized for under 8 minutes on one H100, not yet timed on one); cpu: reduced sizes
#                        (the default when jax sees no accelerator; the section then says it was a CPU run);
#                        tiny: seconds per row (tests)
#   KFJAX_BENCH_METHODS  the methods to run (default: every trainable method of `kfjax list`)
#   KFJAX_BENCH_README   the README whose section is replaced (default benchmarks/README.md)
#   PYTHON               the interpreter (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
out="${1:-${KFJAX_BENCH_OUT:-runs/bench}}"
readme="${KFJAX_BENCH_README:-$here/README.md}"
mkdir -p "$out"
rm -f "$out"/method-*.json "$out/physics.json"  # this script's files of an earlier run: the report reads them all

kfjax() { "$py" -m kfjax "$@"; }

read -r backend devices < <("$py" -c 'import jax; print(jax.default_backend(), jax.device_count())')
size="${KFJAX_BENCH_SIZE:-$([ "$backend" = cpu ] && echo cpu || echo full)}"
methods="${KFJAX_BENCH_METHODS:-$("$py" -c 'from kfjax.methods import registry
print(" ".join(n for n in registry.names() if registry.get(n).trainable))')}"

# Per size: method settings (reduced sizes only), method batch and steps, physics options. The full physics
# rows must keep the geometry and detector names of TARGETS in benchmarks/gpu_report.py.
declare -A settings=()
case "$size" in
  full)
    batch=() steps=20
    physics=(--geometries adn:256 dudonet --sizes 200 128 256 512 --batch 32 --steps 20) ;;
  cpu)
    batch=(--batch $((2 * devices))) steps=5
    settings=(
      [di2in]="data.size=64"
      [dudonet]="data.geometry=adn_half"
      [cyclegan]="data.geometry=adn_quarter model.n_blocks=3"
      [adn]="data.geometry=adn_quarter model.base=32 model.num_residual=2"
    )
    physics=(--geometries adn_half:128 --sizes 100 --volume 128 128 34 --batch 8 --steps 5) ;;
  tiny)
    batch=(--batch "$devices") steps=2
    settings=(
      [di2in]="data.size=16 model.channels=4,8"
      [dudonet]="data.geometry=adn_quarter model.se_channels=4 model.ie_channels=4"
      [cyclegan]="data.recipe=invert data.size=16 model.features=4 model.n_blocks=1 model.d_features=4 model.d_layers=2"
      [adn]="data.recipe=invert data.size=16 model.base=4 model.num_residual=1 model.d_features=4"
    )
    physics=(--tiny --steps 2) ;;
  *) echo "gpu.sh: KFJAX_BENCH_SIZE must be full, cpu or tiny, not '$size'" >&2; exit 2 ;;
esac

echo "gpu.sh: size $size on $devices $backend device(s); methods: $methods; JSON into $out" >&2
notes=()
for method in $methods; do
  if [ "$size" != full ] && [ -z "${settings[$method]+set}" ]; then
    notes+=("$method: no $size settings in benchmarks/gpu.sh, not run")
    continue
  fi
  read -r -a extra <<< "${settings[$method]:-}"
  for dtype in float32 bfloat16; do
    if ! kfjax bench "$method" --set "${extra[@]}" "train.compute_dtype=$dtype" "${batch[@]}" --steps "$steps" \
        --json "$out/method-$method-$dtype.json" --no-progress; then
      notes+=("$method $dtype: kfjax bench failed (its error is in the log)")
    fi
  done
done
if ! kfjax bench physics "${physics[@]}" --json "$out/physics.json" --no-progress; then
  notes+=("physics: kfjax bench physics failed (its error is in the log)")
fi

if [ "$backend" != cpu ]; then  # the tests marked gpu (bf16/remat memory, GPU-vs-CPU numerics) on this device
  if "$py" -m pytest -q -m gpu -p no:cacheprovider "$here/../tests" >&2; then
    notes+=("pytest -m gpu: passed on this device")
  else
    notes+=("pytest -m gpu: FAILED on this device (see the log)")
  fi
fi

"$py" "$here/gpu_report.py" "$out" --size "$size" --readme "$readme" ${notes[@]+--note "${notes[@]}"}
