"""An alternative CPU path for linear layers: route `nn.Linear` through oneDNN instead of the default BLAS.

Whether it pays depends on the CPU, torch's build and the batch shape, so it is measured, not assumed:
`benchmarks/onednn.py` prints prefill throughput and decode-step time both ways, and `results/perf-onednn.json`
holds the figures for this project's 2-core CPU (torch 2.13): there oneDNN is slower for prefill (0.94-0.96x)
and single-row decoding (0.83x) and faster for 16-row decoding (1.10x). An earlier single-pass measurement that
showed it 2-3x faster everywhere did not hold up under repeated, interleaved timing.

How: each `nn.Linear` of the model gets an instance-level `forward` that, when no gradient is being recorded
and the input is fp32 on CPU, multiplies by a oneDNN copy of the weight; otherwise it runs the ordinary
`F.linear`. The dense weight stays the parameter (training, LoRA and state_dict see nothing new), and the
oneDNN copy is rebuilt whenever the parameter changes (its version counter moves).

Caveat: the oneDNN copy doubles the memory held by linear weights (+0.5 GB for SmolLM2-135M). Pass
`onednn=False` to `kvmesh.load_model` (or set KVMESH_ONEDNN=0) to keep the default path.
"""

from __future__ import annotations

import os
import types

import torch
import torch.nn.functional as F


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


def wanted(flag: bool | None) -> bool:
    """An explicit flag wins; else the KVMESH_ONEDNN environment variable; else on."""
    if flag is not None:
        return flag
    return os.environ.get("KVMESH_ONEDNN", "1") != "0"


def _onednn_linear_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return F.linear(x, self.weight, self.bias)
    stamp = (self.weight._version, self.weight.data_ptr())
    if self.__dict__.get("_onednn_stamp") != stamp:  # first call, or the weight changed since
        self.__dict__["_onednn_weight"] = self.weight.detach().to_mkldnn()
        self.__dict__["_onednn_bias"] = None if self.bias is None else self.bias.detach().to_mkldnn()
        self.__dict__["_onednn_stamp"] = stamp
    rows = x.reshape(-1, x.shape[-1]).contiguous().to_mkldnn()
    out = torch._C._nn.mkldnn_linear(rows, self.__dict__["_onednn_weight"], self.__dict__["_onednn_bias"])
    return out.to_dense().view(*x.shape[:-1], self.out_features)


def enable(model: torch.nn.Module) -> int:
    """Switch every plain `nn.Linear` of `model` to the oneDNN inference path. Returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_onednn_linear_forward, module)
            count += 1
    return count
