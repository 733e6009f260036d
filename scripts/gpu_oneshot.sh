#!/usr/bin/env bash
# benchmarks/gpu_suite.py on a lent GPU machine, in one device `run` of < 8 min.
#   here, once:   bash scripts/gpu_oneshot.sh --prep    (faiss-cpu + platformdirs wheels -> .whl/, 19 MB, git-ignored)
#   device run:   command "bash scripts/gpu_oneshot.sh", carry [".whl"], timeout_s 600
# Back in $OUT: gpu_suite.json (copy it to benchmarks/results/), suite.log, gpu_tests.log, nvidia-smi.txt.
set -u
[ -f benchmarks/gpu_suite.py ] || cd "$(dirname "$0")/.." || exit 1  # pasted as a command: already there
if [ "${1:-}" = --prep ]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl faiss-cpu==1.15.1 platformdirs==4.14.9
fi
OUT=${OUT:-/tmp/gpu-oneshot}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
# The image has torch, torchvision, transformers, pillow, numpy; not faiss-cpu nor platformdirs (carried wheels).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . \
  || echo "visdex did not install from the tree; running it from src/"
export PYTHONPATH=$PWD/src:/tmp/site  # the tree runs; the install checks packaging
python3 -c "import faiss, torch, torchvision, visdex; print(visdex.__file__, torch.__version__, torch.cuda.is_available())"
set -o pipefail
timeout 400 python3 benchmarks/gpu_suite.py --out "$OUT/gpu_suite.json" 2>&1 | tee "$OUT/suite.log"
echo "suite exit $?"
# The -m gpu tests (never run on a GPU before), 60 s at most.
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_dupes.py \
  >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests exit $?"
tail -n 5 "$OUT/gpu_tests.log"
