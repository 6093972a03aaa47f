"""Run an entry point with NCCL's contract emulated on CPU (for tests/test_gpu_contract.py; not a
test itself).

    torchrun --nproc_per_node 2 tests/cuda_only_backend.py train.py
        --dist-backend cpu:gloo,cuda:cudaonly ...

Registers a process-group backend "cudaonly" that, like NCCL, is registered for CUDA tensors only
(torch's FakeProcessGroup: it accepts CUDA collectives and moves no data). In a group built as
"cuda:cudaonly" every collective on a CPU tensor fails exactly as under an NCCL-only group ("No
backend type associated with device type cpu"); in the composite "cpu:gloo,cuda:cudaonly" that
`distributed.backend_spec` builds on GPU nodes, CPU tensors go through gloo. Then runs the script
given as the first argument as __main__ with the rest of argv.
"""
import runpy
import sys

import torch.distributed as dist
from torch._C._distributed_c10d import FakeProcessGroup


def _create(common_opts, backend_opts):
    return FakeProcessGroup._create_internal(common_opts.group_rank, common_opts.group_size,
                                             backend_opts)


dist.Backend.register_backend("cudaonly", _create, extended_api=True, devices=["cuda"])

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(__import__("pathlib").Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")
