#!/usr/bin/env bash
# The one GPU check: run on a machine with one CUDA GPU, in one call, in under 8 minutes:
#
#   bash benchmarks/gpu_check.sh          # the CUDA tests, then seed-config training and generation figures
#   bash benchmarks/gpu_check.sh --cpu    # the same script on the CPU with tiny shapes (CI runs this)
#
# 1. the tests marked `cuda` (fp16 with loss scaling, bf16, fused AdamW, sdpa/flash/flex against eager, --compile);
#    on a CPU they are skipped, visibly;
# 2. training throughput and MFU of the seed config, bf16 + compile, against a plain nanoGPT-style loop over the same
#    model in the same run; 3. greedy generation tokens/s against GPT2LMHeadModel with the same weights.
# It prints one table (benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
set +e
tests=$(python -m pytest -q -m cuda -rs tests/test_cuda.py -p no:cacheprovider 2>&1)
status=$?
set -e
echo "$tests" | tail -n 12
summary=$(echo "$tests" | tail -n 1)
python benchmarks/gpu_check.py --tests "$summary" "$@"
exit $status
