"""GPU benchmark, ready to run where CUDA is present: the Newton engine on ParaGRU (B=16, T=4096,
H=256, fp32), eager (``compile=False``) and compiled (``compile=True``: the fused linearization
and VJP through Inductor/Triton), beside a naive GRUCell loop and torch.nn.GRU (cuDNN), in the
same run, timed with CUDA events as ParaRNN's App. B (warm-up runs, then the minimum of timed
runs). On a GPU the Newton sweeps run ``linear_scan``'s torch path over the whole sequence.

Usage: python bench/gpu_newton.py [OUT.json]
Anchors (shared/anchors/h200-2026-11-26.jsonl, one H200): naive loop ~1280 ms and cuDNN GRU
~118 ms forward+backward at this size; the target for Newton is <= 2 ms.
"""
import json
import sys

import torch

import rnnlab
from rnnlab.benchmarks import timing
from rnnlab.benchmarks.timing import write_json
from rnnlab.engines import Newton

B, T, H, WARMUP, RUNS = 16, 4096, 256, 3, 10


def cuda_ms(fn) -> float:
    return timing.cuda_ms(fn, WARMUP, RUNS, stat="min")  # ParaRNN App. B: the minimum

def fwd_and_fwdbwd(run, x):
    def fwd():
        with torch.no_grad():
            run(x)

    def fwdbwd():
        y = run(x.requires_grad_())
        y.sum().backward()

    return cuda_ms(fwd), cuda_ms(fwdbwd)


def main(out: str) -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_newton.py needs a CUDA device")
    torch.manual_seed(0)
    dev = "cuda"
    x = torch.randn(B, T, H, device=dev)
    para = rnnlab.cells.get("paragru", H, H)
    engines = {"eager": Newton(compile=False), "compiled": Newton(compile=True)}
    layers = {k: rnnlab.Recurrent(para, engine=e).to(dev) for k, e in engines.items()}
    gru = torch.nn.GRU(H, H, batch_first=True).to(dev)
    cell = torch.nn.GRUCell(H, H).to(dev)

    def loop(x):
        h, ys = x.new_zeros(B, H), []
        for xt in x.unbind(1):
            h = cell(xt, h)
            ys.append(h)
        return torch.stack(ys, 1)

    runs = {"newton_paragru_eager": lambda x: layers["eager"](x)[0],
            "newton_paragru_compiled": lambda x: layers["compiled"](x)[0],
            "cudnn_gru": lambda x: gru(x)[0], "naive_grucell_loop": loop}
    result = {"benchmark": "gpu_newton", "B": B, "T": T, "H": H, "dtype": "float32",
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "ms": {}}
    for name, fn in runs.items():
        f, fb = fwd_and_fwdbwd(fn, x)
        result["ms"][f"{name}_fwd"], result["ms"][f"{name}_fwdbwd"] = f, fb
    result["newton_iterations"] = {k: e.stats.get("iterations") for k, e in engines.items()}
    result["newton_compiled"] = engines["compiled"].stats.get("compiled")
    print(json.dumps(result, indent=1))
    write_json(result, out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/gpu_newton.json")
