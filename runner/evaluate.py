"""The runner stage: an engines directory and a dataset in, scored items and metrics out.

Steps, each timed: open the manifest, load documents, tokenize the harness's way, pack and batch, run the
blocks layer-major, score. Latency is everything but tokenization.
Usage: `results = evaluate(RunOptions(engines=Path("engines/smollm2-135m"), dataset="...jsonl", limit=200))`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cetrt.backends import get_backend
from cetrt.errors import UserError
from cetrt.manifest import Manifest, engine_source, read_manifest
from cetrt.runner.dataset import DEFAULT_DATASET, load_docs
from cetrt.runner.executor import ResidentStore, Timings, run_layer_major
from cetrt.runner.packing import make_batches, pack
from cetrt.runner.report import RunResults
from cetrt.runner.requests import encode_docs
from cetrt.runner.scoring import item_results, metrics


@dataclass(frozen=True)
class RunOptions:
    engines: Path
    dataset: str = DEFAULT_DATASET
    limit: int | None = None
    tokens_per_batch: int = 4096
    length_multiple: int = 32
    chunk_tokens: int = 1 << 16
    threads: int | None = None
    progress: bool = True


def load_tokenizer(engines: Path, manifest: Manifest):
    from transformers import AutoTokenizer

    tokenizer_dir = engines / Path(manifest.tokenizer_files[0].path).parent
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def evaluate(options: RunOptions) -> RunResults:
    start = time.perf_counter()
    engines = Path(options.engines)
    manifest = read_manifest(engines)
    backend = get_backend(manifest.backend)
    if backend.version() != manifest.backend_version:
        raise UserError(
            f"{engines}: engines were built with {manifest.backend} {manifest.backend_version}, but "
            f"{backend.version()} is installed; rebuild them with `make engines`"
        )
    docs = load_docs(options.dataset, options.limit)

    tokenize_start = time.perf_counter()
    encoded = encode_docs(load_tokenizer(engines, manifest), docs)
    tokenize_s = time.perf_counter() - tokenize_start

    rows = [pack(i, e) for i, e in enumerate(encoded)]
    batches = make_batches(rows, options.tokens_per_batch, options.length_multiple, manifest.model.max_positions)
    timings = Timings()
    backend_options = {"threads": options.threads} if options.threads else {}
    store = ResidentStore(lambda block: backend.load(engine_source(engines, block), manifest.target, backend_options), timings)
    steps = len(batches) * len(manifest.blocks)
    with tqdm(total=steps, desc="scoring", unit="step", disable=not options.progress) as bar:
        try:
            outputs = run_layer_major(manifest.blocks, store, batches, options.chunk_tokens, timings, bar.update)
        finally:
            store.close()
    items = item_results(encoded, batches, outputs)
    return RunResults(
        metrics=metrics(items),
        items=items,
        model=manifest.model_id,
        model_hash=manifest.model_hash,
        backend=manifest.backend,
        backend_version=manifest.backend_version,
        target=manifest.target.name,
        dtype=manifest.dtype,
        dataset=str(options.dataset),
        tokenize_s=tokenize_s,
        load_s=timings.load_s,
        compute_s=timings.compute_s,
        total_s=time.perf_counter() - start,
        tokens=sum(b.tokens for b in batches),
        padded_tokens=sum(b.shape[0] * b.shape[1] for b in batches),
        batch_shapes=[b.shape for b in batches],
    )
