"""Pieces every architecture's blocks share: FP32 norms, the packed mask, grouped attention, the head.

Precision rule of the export: matrix products run in the block's dtype; normalisation statistics and softmax
run in FP32 and are cast back, so an FP16 engine keeps those islands whatever the backend chooses.
Usage: `attention(q, k, v, packed_mask(segment_ids), scale)`; `ScoringHead(final_norm, projection, lm_head)`.
"""

from __future__ import annotations

import torch
from torch import nn

from cetrt.spec import PAD_SEGMENT

MASKED = -1e9  # finite, so a fully masked row (never built) could not turn softmax into NaN


def packed_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """The additive FP32 mask [B, 1, L, L] of packing with a shared prefix, from segment ids [B, L] (0 context,
    k + 1 ending k, PAD_SEGMENT padding): a token sees earlier tokens of the context and of its own ending, never
    another ending; padding sees itself only. Built in the graph, once per layer block: the host sends B x L
    int32 instead of B x L x L FP32 (1.44 GB for SmolLM2 on all items) and never builds it (the host's batch
    inputs, mostly this mask, took 0.9-1.7 s of 5.0-6.7 s of GPU compute: run_blocks_smollm2_host_mask.json)."""
    positions = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    causal = (positions[:, None] >= positions[None, :]).unsqueeze(0)  # [1, L, L]
    query, key = segment_ids.unsqueeze(2), segment_ids.unsqueeze(1)  # [B, L, 1], [B, 1, L]
    allowed = causal & ((key == 0) | (key == query)) & (key != PAD_SEGMENT) & (query != PAD_SEGMENT)
    padding_itself = (positions[:, None] == positions[None, :]).unsqueeze(0) & (query == PAD_SEGMENT)
    zero = torch.zeros((), dtype=torch.float32, device=segment_ids.device)
    masked = torch.full((), MASKED, dtype=torch.float32, device=segment_ids.device)
    return torch.where(allowed | padding_itself, zero, masked).unsqueeze(1)


class Projections(nn.Module):
    """Several Linears over one input (Q, K, V; gate, up), each its own MatMul; returns their outputs in order.

    Not one MatMul over the concatenated weights sliced afterwards: ONNX Runtime runs those Slices as a Split
    kernel that copies the whole output, the largest kernel after the GEMMs (SmolLM2 on the H200: 14% of a layer
    block's kernel time; LLaMA-30B: 6%), where separate MatMuls write each output once. TensorRT fuses either
    form. `FusedProjections` is the other form, kept as bench/layer_forms_ab.py's baseline.
    """

    def __init__(self, *layers: nn.Linear):
        super().__init__()
        self.parts = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part(x) for part in self.parts)

    @classmethod
    def from_fused(cls, fused: nn.Linear, sizes: list[int]) -> "Projections":
        """A checkpoint's fused Linear (Phi-3's qkv_proj, gate_up_proj) as separate Linears of `sizes` outputs."""
        if sum(sizes) != fused.out_features:
            raise ValueError(f"a fused projection of {fused.out_features} outputs split as {sizes}")
        weights = fused.weight.detach().split(sizes, dim=0)  # views of the checkpoint's rows
        biases = fused.bias.detach().split(sizes) if fused.bias is not None else [None] * len(sizes)
        parts = []
        for weight, bias in zip(weights, biases):
            part = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype,
                             device=weight.device)
            part.weight = nn.Parameter(weight, requires_grad=False)
            if bias is not None:
                part.bias = nn.Parameter(bias, requires_grad=False)
            parts.append(part)
        return cls(*parts)


class FusedProjections(nn.Module):
    """One MatMul over the concatenated weights, its output sliced: the export's form before 2026-12-02."""

    def __init__(self, *layers: nn.Linear):
        super().__init__()
        weight = torch.cat([layer.weight.detach() for layer in layers], dim=0)
        has_bias = layers[0].bias is not None
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, dtype=weight.dtype,
                                device=weight.device)
        self.linear.weight = nn.Parameter(weight, requires_grad=False)
        if has_bias:
            self.linear.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]), requires_grad=False)
        self.sizes = [layer.out_features for layer in layers]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, parts, start = self.linear(x), [], 0
        for size in self.sizes:  # slices, not Split: onnx has no opset 18 -> 17 adapter for Split
            parts.append(out[..., start : start + size])
            start += size
        return tuple(parts)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaMA's RMSNorm with its statistics in FP32, in Hugging Face's order (cast back, then scale). Divided by
    the square root rather than times rsqrt: the form ONNX Runtime's optimizer fuses into one
    SimplifiedLayerNormalization kernel (standard ops either way, for TensorRT)."""
    x32 = x.float()
    x32 = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm computed in FP32 (weights upcast), result in the input's dtype."""
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    return nn.functional.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[B, L, heads*dim] -> [B, heads, L, dim]."""
    b, l, _ = x.shape
    return x.view(b, l, num_heads, head_dim).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V heads, softmax in FP32.

    q [B, Hq, L, D], k and v [B, Hkv, L, D], mask [B, 1, L, L] additive FP32 (`packed_mask`). Query heads are
    grouped over the K/V heads by broadcasting (no copies of K and V); returns [B, L, Hq*D].
    """
    b, hq, l, d = q.shape
    hkv = k.shape[1]
    q = (q * scale).view(b, hkv, hq // hkv, l, d)
    scores = torch.matmul(q, k.unsqueeze(2).transpose(-1, -2))  # [B, Hkv, G, L, L]
    probs = torch.softmax(scores.float() + mask.unsqueeze(1), dim=-1).to(v.dtype)
    out = torch.matmul(probs, v.unsqueeze(2))  # [B, Hkv, G, L, D]
    return out.reshape(b, hq, l, d).transpose(1, 2).reshape(b, l, hq * d)


class ScoringHead(nn.Module):
    """Final norm, LM head and log-softmax at the scored positions only; never returns [tokens, vocab] logits.

    Inputs: hidden [B, L, H], score_index [B, S] (positions whose next token is scored), target_ids [B, S].
    Outputs: logprobs [B, S] FP32, greedy [B, S] bool (the target is the argmax).
    """

    def __init__(self, final_norm: nn.Module, lm_head: nn.Linear):
        super().__init__()
        self.final_norm = final_norm
        self.lm_head = lm_head

    def forward(self, hidden: torch.Tensor, score_index: torch.Tensor, target_ids: torch.Tensor):
        index = score_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        picked = torch.gather(hidden, 1, index)
        logits = self.lm_head(self.final_norm(picked)).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        target = target_ids.unsqueeze(-1)
        token_logprobs = torch.gather(logprobs, -1, target).squeeze(-1)
        greedy = torch.argmax(logits, dim=-1) == target_ids
        return token_logprobs, greedy
