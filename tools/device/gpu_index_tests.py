"""Run the GPU-marked index tests on a lent H100/H200 with the faiss-gpu kit (tools/device/README.md).

    PYTHONPATH="/tmp/site:$PWD" python3 tools/device/gpu_index_tests.py -k retrieval

The kit (copied to .gpu-kit/) must be set up before FAISS is imported, so this script sets it up and then runs
pytest in the same process; its arguments go to pytest.
"""

import sys
from pathlib import Path

import torch

from benchmarks.harness import setup_faiss_gpu_kit

setup_faiss_gpu_kit(Path(".gpu-kit"))
import faiss  # noqa: E402
import pytest  # noqa: E402

print("faiss", faiss.__version__, "GPUs:", faiss.get_num_gpus(), torch.cuda.get_device_name(0), flush=True)
sys.exit(pytest.main(["-p", "no:cacheprovider", "-v", "-m", "gpu", "tests/index", *sys.argv[1:]]))
