#!/usr/bin/env bash
# The CUDA checks of issue 10 in one go, on a machine with a GPU: the CUDA tests (every test whose id
# names cuda: the stock and generic paths there, against the reference there and against the CPU) and
# benchmarks/bench_cuda.py. Logs and JSON go to $OUT (default results_cuda/). Extra arguments go to
# bench_cuda.py, e.g. `bash benchmarks/cuda_checks.sh --sections compiled`.
set -u
OUT=${OUT:-results_cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L
python3 -c "import torch, numba, pyro; print('torch', torch.__version__, 'numba', numba.__version__, 'pyro', pyro.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_devices.py tests/test_scan.py tests/test_scan_generic.py tests/test_memory.py \
    tests/test_testing.py 2>&1 | tee "$OUT/pytest_cuda.log"
python3 benchmarks/bench_cuda.py --out "$OUT/cuda.json" "$@" 2>&1 | tee "$OUT/bench_cuda.log"
