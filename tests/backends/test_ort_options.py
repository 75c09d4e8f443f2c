"""The CUDA provider options every ONNX Runtime session gets (cetrt.backends.onnxruntime.cuda_options)."""

from __future__ import annotations

from cetrt.backends.onnxruntime import EFFICIENT_ATTENTION, cuda_options


def test_cuda_sessions_ask_for_the_memory_efficient_attention_kernel_and_no_tf32():
    """cuDNN's flash attention builds a plan on each new batch shape's first run (70-100 ms on the H200 against
    under 1 ms for the memory-efficient kernel): a run meets each shape once per engine type."""
    options = cuda_options()
    assert options["sdpa_kernel"] == str(EFFICIENT_ATTENTION) == "2"
    assert options["use_tf32"] == "0" and options["arena_extend_strategy"] == "kSameAsRequested"
