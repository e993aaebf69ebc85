"""A linear layer whose bf16 backward takes the fast GEMM kernel on CPUs that emulate bf16.

On CPUs without AVX512-BF16/AMX, oneDNN multiplies two row-major bf16 matrices ~10× slower than
when one operand is a transposed view (docs/BENCHMARKS.md: 0.9-1.2 against 11-16 GFLOP/s). The
forward `x @ Wᵀ` and the weight gradient `gradᵀ @ x` get the fast case; the input gradient
`grad @ W` gets the slow one and dominates a bf16 step. Multiplying by a column-major copy of W
(`W.t().contiguous().t()`: same values, other strides) computes the same product on the fast
kernel. Same math as `F.linear`; only the memory layout of one operand differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ColumnMajorWeightLinear(torch.autograd.Function):
    """y = x Wᵀ + b; backward multiplies the incoming gradient by a column-major copy of W."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # (N, out) @ (out, in) with the (out, in) operand stored column-major.
            grad_x = (g @ weight.t().contiguous().t()).view(*grad_out.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ x.reshape(-1, x.shape[-1])  # (out, N) @ (N, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    fast_cpu_bf16_backward: bool = True,
) -> torch.Tensor:
    """`F.linear`, through `_ColumnMajorWeightLinear` for bf16 on the CPU when enabled.

    Under CPU bf16 autocast the inputs are cast to bf16 here, as autocast would, and autocast is
    off inside, so the same bf16 GEMMs run; gradients flow back through the casts to fp32 weights.
    Without autocast (DeepSpeed's bf16 mode) the tensors are bf16 already.
    """
    if not fast_cpu_bf16_backward or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return F.linear(x, weight, bias)
        bf16 = torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            return _ColumnMajorWeightLinear.apply(
                x.to(bf16), weight.to(bf16), None if bias is None else bias.to(bf16)
            )
    if x.dtype == weight.dtype == torch.bfloat16:
        return _ColumnMajorWeightLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and names) whose forward is `linear` above."""

    def __init__(self, in_features: int, out_features: int, fast_cpu_bf16_backward: bool = True):
        super().__init__(in_features, out_features)
        self.fast_cpu_bf16_backward = fast_cpu_bf16_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.fast_cpu_bf16_backward)
