"""Counting parameters and multiply-adds with torch.utils.flop_counter, for tools/flops.py and
tools/benchmark.py.

The counter counts convolutions and matrix products (attention included) and reports FLOPs =
2 x multiply-adds; norms, activations, softmax, pooling and interpolation are not counted.

Fused attention kernels the installed torch has no formula for would silently count as zero. On the
CPU, timm's attention runs `aten._scaled_dot_product_flash_attention_for_cpu` (and its backward),
which torch's counter does not know; the CUDA kernels (flash, memory-efficient, cuDNN) are known to
recent versions of torch but not to all that this project supports. Formulas are supplied for those
of them the installed torch lacks (EXTRA_FORMULAS).
"""
from typing import Callable, Dict

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

# Per training step: the student's forward and backward pass count as 3 forward passes (the backward
# computes gradients of both activations and weights, 2 forwards' worth of products); the frozen
# teacher runs one forward pass.
STUDENT_PASSES_PER_STEP = 3
TEACHER_PASSES_PER_STEP = 1
TRAINING_FLOPS_CONVENTION = ('training FLOPs per step = 3 x student forward + 1 x teacher forward '
                             '(a teacher being trained: 3 x its forward); FLOPs = 2 x multiply-adds '
                             'of convolutions and matrix products')


def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a fused attention forward, softmax(Q K^T) V: the products Q K^T (queries x keys x dim)
    and (attention) V (queries x keys x value dim), 2 FLOPs per multiply-add. Key and value heads may
    be fewer than query heads (grouped-query attention): each query head still does the full work."""
    batch, heads, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (dim + value_dim)


def attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                             out_shape=None, **kwargs) -> int:
    """FLOPs of a fused attention backward: Q K^T recomputed, then the gradients of the attention
    weights (dO V^T), of V (P^T dO), of Q (dS K) and of K (dS^T Q), 2 FLOPs per multiply-add."""
    batch, heads, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (3 * dim + 2 * value_dim)


def _missing_formulas() -> Dict[object, Callable]:
    """{op: formula} for the fused attention ops of this torch build that its counter cannot count."""
    candidates = {
        '_scaled_dot_product_flash_attention_for_cpu': attention_flops,
        '_scaled_dot_product_flash_attention_for_cpu_backward': attention_backward_flops,
        '_scaled_dot_product_flash_attention': attention_flops,
        '_scaled_dot_product_efficient_attention': attention_flops,
        '_scaled_dot_product_cudnn_attention': attention_flops,
        '_scaled_dot_product_flash_attention_backward': attention_backward_flops,
        '_scaled_dot_product_efficient_attention_backward': attention_backward_flops,
        '_scaled_dot_product_cudnn_attention_backward': attention_backward_flops,
    }
    formulas = {}
    for name, formula in candidates.items():
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            formulas[op] = formula
    return formulas


EXTRA_FORMULAS = _missing_formulas()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], object]) -> Dict[str, int]:
    """FLOPs of running `fn()` without autograd: {'Global': total, '<Class>.<child>': ...} as the
    counter names modules (class of the root, then attribute paths)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        fn()
    return {name: sum(per_op.values()) for name, per_op in counter.get_flop_counts().items()}


def count_macs(model: torch.nn.Module, *inputs: torch.Tensor) -> Dict[str, int]:
    """Multiply-adds of one forward pass of `model(*inputs)`: 'total' and one entry per child module
    of the model (encoder, decoder, distill_heads)."""
    flops = count_flops(lambda: model(*inputs))
    root = type(model).__name__
    macs = {'total': flops['Global'] // 2}
    for name, _ in model.named_children():
        macs[name] = flops.get(f'{root}.{name}', 0) // 2
    return macs


def training_step_flops(student_forward_flops: int, teacher_forward_flops: int = 0) -> int:
    """FLOPs of one training step under TRAINING_FLOPS_CONVENTION (no teacher: 0)."""
    return (STUDENT_PASSES_PER_STEP * student_forward_flops
            + TEACHER_PASSES_PER_STEP * teacher_forward_flops)
