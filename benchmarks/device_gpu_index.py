"""Run the GPU-marked tests on a lent H100/H200 with the faiss-gpu kit (see BENCHMARKS.md).

The kit (../shared/tools/faiss-gpu-device, copied to .gpu-kit/) must be set up before FAISS is
imported, so this script prepares it and then runs pytest in the same process.
"""

import os
import subprocess
import sys

import torch

subprocess.run(["mkdir", "-p", "/tmp/site_gpu"], check=True)
subprocess.run(["tar", "-C", "/tmp/site_gpu", "-xJf", ".gpu-kit/faiss_gpu_sm90_site.tar.xz"], check=True)
torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")  # loads cuBLAS 13 for the shim
with open("/proc/self/maps") as maps:
    os.environ["CUBLAS13_PATH"] = next(line.split()[-1] for line in maps if "libcublas.so.13" in line)
sys.path[:0] = ["/tmp/site_gpu", ".gpu-kit"]
import gpu_preload  # noqa: E402

gpu_preload.setup("/tmp/site_gpu")
import faiss  # noqa: E402
import pytest  # noqa: E402

print("faiss", faiss.__version__, "GPUs:", faiss.get_num_gpus(), torch.cuda.get_device_name(0), flush=True)
sys.exit(pytest.main(["-p", "no:cacheprovider", "-v", "-m", "gpu", "tests/index", *sys.argv[1:]]))
