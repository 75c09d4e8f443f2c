"""CUDA graphs for a TensorRT session: `execute_async_v3` captured once per set of input shapes, then replayed.

A graph replays the addresses it was captured with, so each key (profile, input shapes, context-memory
address) gets its own input and output buffers: a run copies its inputs in, replays, and copies the outputs
out (they outlive the run: a chunk's hidden states wait for the next block). The first run of a key is an
ordinary enqueue, as TensorRT requires after a shape change (its resource updates cannot be captured); the
capture follows it. Off unless asked for, and only where `Features.cuda_graph_capture` (full TensorRT 10.x
on): never measured on the Orin, and at thousands of tokens per batch launch overhead is small.
The session sizes the shared context memory for its largest profile first, so that buffer never moves.
Engines with weights as inputs are not graphed (their static buffers would copy the weights per key).
Inputs: a `Device`, per run a key, the input buffers and the session's enqueue; output: the output buffers.
Usage: `graphs = GraphedRuns(device)`; `outputs = graphs.run(key, tensors, session._enqueue_into)`.
"""

from __future__ import annotations

from typing import Any, Callable

from cetrt.backends.tensorrt_device import Device

Enqueue = Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]


class GraphedRuns:
    def __init__(self, device: Device):
        self.device = device
        self._graphs: dict[tuple, tuple[dict, dict, Callable[[], None]]] = {}
        self.captures = 0
        self.replays = 0

    def run(self, key: tuple, tensors: dict[str, Any], enqueue: Enqueue) -> dict[str, Any]:
        device = self.device
        entry = self._graphs.get(key)
        if entry is None:
            inputs = {n: device.empty(tuple(t.shape), t.dtype) for n, t in tensors.items()}
        else:
            inputs = entry[0]
        for name, tensor in tensors.items():
            device.copy(inputs[name], tensor)
        if entry is None:
            outputs = enqueue(inputs, None)  # uncaptured: TensorRT's updates for the new shapes happen here
            replay = device.capture(lambda: enqueue(inputs, outputs))
            self._graphs[key] = (inputs, outputs, replay)
            self.captures += 1
        else:
            outputs, replay = entry[1], entry[2]
            replay()
            self.replays += 1
        results = {n: device.empty(tuple(t.shape), t.dtype) for n, t in outputs.items()}
        for name, buffer in outputs.items():
            device.copy(results[name], buffer)
        device.hold_until_done([*tensors.values(), *results.values()])
        return results
