#!/usr/bin/env bash
# The GPU check (issue 12) in one call of at most 8 minutes, its output teed to $OUT/gpu_check.log:
#   1. installs what the device machine lacks (it has torch and Python, no MONAI, nibabel or ignite)
#      from the wheels carried in .whl/ (see --wheels), and this checkout without its dependencies;
#   2. runs the CUDA tests (tests/test_devices.py, tests/test_cuda.py: no MLflow, no SimpleITK);
#   3. runs benchmarks/gpu_check.py (training steps of every peer, fp16/bf16, torch.compile, end-to-end
#      inference of a 512x512x300 CT, the same with the GPU memory capped) into $OUT/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh              # on the device machine: run(carry=[".whl"], ...)
#   bash benchmarks/gpu_check.sh --dry-run    # here, on the CPU, tiny sizes, nothing installed
#   bash benchmarks/gpu_check.sh --wheels     # print the pip download lines that fill .whl/
set -euo pipefail
cd "$(dirname "$0")/.."

# The wheels the device needs besides torch: the runtime imports of attnunet's network, inference and
# readers (pydicom for the DICOM series checks; SimpleITK, highdicom and MLflow are imported only where
# DICOM/NRRD, DICOM SEG or tracking are used, tests/test_gpu_check.py checks it), nnU-Net's network,
# pytest for the CUDA tests, setuptools to install this checkout. Versions: this machine's.
PACKAGES=(monai nibabel numpy pillow pydicom pytorch-ignite tqdm packaging dynamic-network-architectures
          pytest pluggy iniconfig setuptools)

if [[ "${1:-}" == "--wheels" ]]; then
    for package in "${PACKAGES[@]}"; do
        version=$(python -c "import importlib.metadata as m; print(m.version('$package'))")
        echo "pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp" \
             "--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $package==$version"
    done
    exit 0
fi

DRY=()
[[ "${1:-}" == "--dry-run" ]] && DRY=(--dry-run)
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
{
    echo "gpu_check: $(date -u +%FT%TZ) ${DRY[*]:-on the device}"
    if [[ ${#DRY[@]} -eq 0 ]]; then
        python -m pip install -q --no-index --find-links .whl --no-deps "${PACKAGES[@]}"
        python -m pip install -q --no-index --no-deps --no-build-isolation .
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    fi
    # --noconftest: the suite's conftest writes DICOM with SimpleITK, which the device lacks
    # -P: the checkout's own attnunet/ folder must not shadow the installed package (whose attnunet.pipelines
    # and attnunet.transforms come from the top-level folders)
    python -P -m pytest -q --noconftest -p no:cacheprovider tests/test_devices.py tests/test_cuda.py
    python benchmarks/gpu_check.py "${DRY[@]}" --json "$OUT/gpu_check.json"
} 2>&1 | tee "$OUT/gpu_check.log"
