#!/usr/bin/env bash
# Prepares the CUDA build of onnxruntime for the device machine (docs/benchmarks.md, "GPU"):
# its image holds the CPU build, the onnxruntime-gpu wheel is ~255 MB and one device call
# carries at most 64 MiB with the working tree, so the wheel travels in parts, one part per call while the machine
# stays warm (ignored files an earlier call left there are kept), and is put back together
# there by the last call:
#
#   bash tools/gpu_wheel_parts.sh                       # here: .whl/gpu/part_aa, part_ab, ...
#   run(carry=[".whl/gpu/part_aa"], command="ls .whl/gpu")          # one call per part but the last
#   run(carry=[".whl/gpu/part_ae"], command="bash tools/gpu_wheel_parts.sh --install && \
#       PYTHONPATH=/tmp/site:$PWD python3 tools/bench_gpu.py --out $OUT")
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.whl/gpu
version=${ORT_GPU_VERSION:-1.31.1}
wheel=onnxruntime_gpu-$version-cp312-cp312-manylinux_2_28_x86_64.whl
if [[ "${1:-}" == "--install" ]]; then           # on the device machine
    cat "$dir"/part_* > "/tmp/$wheel"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "/tmp/$wheel"
    PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    exit 0
fi
mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$dir" "onnxruntime-gpu==$version"
(cd "$dir" && rm -f part_* && split -b 56M "$wheel" part_ && rm "$wheel" && ls -l part_*)
