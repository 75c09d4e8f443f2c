"""FLOP as cetrt's engines compute them: the one place the formulas live.

The engines do the work of padded shapes, not of the useful tokens alone: a batch [rows, length] runs every
padded position through each decoder layer (2 FLOP per weight per position), full attention over the whole
packed row, masked or not (QK^T and PV: 2 * length * width each, per position, width = heads * head_dim), and
the head only at the batch's padded scored slots (its vocabulary matmul). The embed block is a gather: 0.
Used twice: to predict a run (`run_flop`), and to turn measured per-block times into FLOP/s
(`layer_block_flop(model, layers, batch) / seconds`).
Usage: `rate = layer_block_flop(spec, 1, batch) / s_per_layer_block`; `run_flop(spec, batches) / peak`.
"""

from __future__ import annotations

from typing import Iterable

from cetrt.spec import ModelSpec
from cetrt.workload.packing import Batch


def layer_token_flop(model: ModelSpec) -> float:
    """The matmuls of one decoder layer for one position: 2 FLOP per weight (norms and biases included)."""
    return 2.0 * model.layer_params()


def attention_flop(model: ModelSpec, rows: int, length: int) -> float:
    """QK^T and PV of one layer over rows of `length` positions, each attending to its whole row."""
    width = model.num_heads * model.head_dim
    return 4.0 * rows * length * length * width


def layer_block_flop(model: ModelSpec, layers: int, batch: Batch) -> float:
    """A block of `layers` decoder layers over one batch, at its padded shape [rows, length]."""
    rows, length = batch.shape
    return layers * (rows * length * layer_token_flop(model) + attention_flop(model, rows, length))


def head_slot_flop(model: ModelSpec) -> float:
    """The head at one scored slot: the vocabulary matmul (and OPT's projection out, where it has one)."""
    project_out = 2.0 * model.hidden_size * model.embed_dim if model.embed_dim != model.hidden_size else 0.0
    return 2.0 * model.embed_dim * model.vocab_size + project_out


def head_flop(model: ModelSpec, batch: Batch) -> float:
    """The head over one batch: every padded scored slot [rows, slots]."""
    return len(batch.rows) * batch.slots * head_slot_flop(model)


def batch_flop(model: ModelSpec, batch: Batch) -> float:
    """One batch through the whole model: all layers and the head (the embed is a gather)."""
    return layer_block_flop(model, model.num_layers, batch) + head_flop(model, batch)


def run_flop(model: ModelSpec, batches: Iterable[Batch]) -> float:
    """A whole run: every batch through every layer and the head."""
    return sum(batch_flop(model, b) for b in batches)
