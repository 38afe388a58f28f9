import os

import torch

# Two cores: keep torch from oversubscribing them when pytest runs.
torch.set_num_threads(min(2, torch.get_num_threads()))

# Without CUDA, Triton kernels run on CPU tensors in Triton's interpreter. The switch must be set
# before anything imports triton (``import rnnlab`` can, through torch._dynamo), so it is set
# here; on a CUDA machine the kernels compile for the GPU and tests/gpu checks them there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
