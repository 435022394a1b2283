"""Backward for our custom ops: differentiate the reference (kernels are forward-only)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def register_reference_autograd(op, reference: Callable, num_tensors: int) -> None:
    """Gradients of `op` through `reference`; the first `num_tensors` arguments are tensors, the rest attributes."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:num_tensors])
        ctx.attributes = inputs[num_tensors:]

    def backward(ctx, *grads):
        with torch.enable_grad():
            tensors = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
            outputs = reference(*tensors, *ctx.attributes)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            wanted = [t for t in tensors if t.requires_grad]
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            found = ()
            if wanted and pairs:
                found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs])
        found = iter(found)
        return tuple(next(found) if t.requires_grad and pairs else None for t in tensors) + (None,) * len(
            ctx.attributes
        )

    op.register_autograd(backward, setup_context=setup_context)
