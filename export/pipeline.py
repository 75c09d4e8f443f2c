"""The export stage: a Hugging Face model in, per-block ONNX files + tokenizer + blocks.json out.

Blocks: `embed`, `layers[i:j]` of `layers_per_block` decoder layers each, `head`. Their interfaces (names,
dtypes, dynamic dims B, L, S) are fixed here, once, and written to blocks.json for the later stages.
An export whose inputs (model hash, options, versions) are unchanged and whose files all verify is reused, not
redone. Redoing it removes the old blocks.json first and the calib.json of the old export (it belongs to that
export). The disk is checked for the export's size before any block is written; a full disk is one line.
Layer blocks of one size share one traced graph (cetrt.export.shared_graph): two traces per size, not one a block.
Usage: `export_model(ExportOptions(model="smollm2-135m", out_dir=Path("artifacts/onnx/smollm2-135m")))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cetrt.errors import UserError
from cetrt.export.loading import DEFAULT_MODEL, LoadedModel, load_model
from cetrt.export.onnx_export import EXTERNAL_DATA_BYTES, OPSET, needs_external_data, save_block
from cetrt.export.shared_graph import SharedGraphs, share_layer_graphs
from cetrt.families import get_family
from cetrt.families.base import Family
from cetrt.files import FileRecord
from cetrt.formats.blocks import (
    BLOCKS_FILE,
    TOKENIZER_DIR,
    ExportedBlock,
    ExportedModel,
    read_blocks,
    verify_export,
    write_blocks,
)
from cetrt.formats.calib import CALIB_FILE
from cetrt.outputs import check_output_dir, writing
from cetrt.reuse import changed, versions
from cetrt.sources import model_hash, resolve_source
from cetrt.spec import (
    DTYPES,
    GREEDY,
    HIDDEN,
    HIDDEN_OUT,
    INPUT_IDS,
    LOGPROBS,
    POSITION_IDS,
    SCORE_INDEX,
    SEGMENT_IDS,
    TARGET_IDS,
    BlockSpec,
    TensorSpec,
    dtype_bytes,
)

_EXAMPLE_B, _EXAMPLE_L, _EXAMPLE_S = 2, 7, 5


@dataclass(frozen=True)
class ExportOptions:
    model: str = DEFAULT_MODEL
    out_dir: Path = Path("artifacts/onnx") / DEFAULT_MODEL
    layers_per_block: int = 1
    dtype: str = "float16"
    external_data_bytes: int = EXTERNAL_DATA_BYTES


def block_specs(family: Family, num_layers: int, layers_per_block: int, hidden: int, dtype: str) -> list[BlockSpec]:
    """The interface of every block; the one place block inputs and outputs are decided (the family names which
    of the boundary tensors its embed and layer blocks take)."""
    tensors = {
        INPUT_IDS: TensorSpec(INPUT_IDS, "int64", ("B", "L")),
        POSITION_IDS: TensorSpec(POSITION_IDS, "int64", ("B", "L")),
        SEGMENT_IDS: TensorSpec(SEGMENT_IDS, "int32", ("B", "L")),
        HIDDEN: TensorSpec(HIDDEN, dtype, ("B", "L", hidden)),
    }
    hidden_out = TensorSpec(HIDDEN_OUT, dtype, ("B", "L", hidden))
    embed_inputs = tuple(tensors[name] for name in family.embed_inputs)
    layer_inputs = tuple(tensors[name] for name in family.layer_inputs)
    specs = [BlockSpec(index=0, kind="embed", first_layer=0, last_layer=0, inputs=embed_inputs, outputs=(hidden_out,))]
    for first in range(0, num_layers, layers_per_block):
        last = min(first + layers_per_block, num_layers)
        specs.append(BlockSpec(
            index=len(specs), kind="layers", first_layer=first, last_layer=last,
            inputs=layer_inputs, outputs=(hidden_out,),
        ))
    specs.append(BlockSpec(
        index=len(specs), kind="head", first_layer=num_layers, last_layer=num_layers,
        inputs=(tensors[HIDDEN], TensorSpec(SCORE_INDEX, "int64", ("B", "S")), TensorSpec(TARGET_IDS, "int64", ("B", "S"))),
        outputs=(TensorSpec(LOGPROBS, "float32", ("B", "S")), TensorSpec(GREEDY, "bool", ("B", "S"))),
    ))
    return specs


def example_inputs(hidden: int, dtype: torch.dtype, vocab: int) -> dict[str, torch.Tensor]:
    b, l, s = _EXAMPLE_B, _EXAMPLE_L, _EXAMPLE_S
    return {
        INPUT_IDS: torch.randint(0, vocab, (b, l)),
        POSITION_IDS: torch.arange(l).repeat(b, 1),
        SEGMENT_IDS: torch.zeros(b, l, dtype=torch.int32),
        HIDDEN: torch.randn(b, l, hidden, dtype=dtype),
        SCORE_INDEX: torch.randint(0, l, (b, s)),
        TARGET_IDS: torch.randint(0, vocab, (b, s)),
    }


def export_inputs(hash_: str, options: ExportOptions) -> dict:
    """What an export depends on: equal inputs, equal files (the export is deterministic for a given model)."""
    return {"model_hash": hash_, "dtype": options.dtype, "layers_per_block": options.layers_per_block,
            "external_data_bytes": options.external_data_bytes, "opset": OPSET,
            "versions": versions("torch", "transformers", "onnx")}


def reusable_export(out: Path, inputs: dict) -> tuple[ExportedModel | None, str]:
    """The export already in `out` if it was made from `inputs` and every file verifies; else None and why."""
    if not (out / BLOCKS_FILE).is_file():
        return None, "no export there yet"
    try:
        exported = read_blocks(out)
        why = changed(exported.inputs, inputs)
        if why is None:
            verify_export(out, exported)
            return exported, "unchanged inputs, every file verified"
        return None, why
    except UserError as e:
        return None, f"the export there does not verify ({e})"


def _export_bytes(loaded: LoadedModel, dtype: str) -> int:
    """What the export will write: every parameter at the export precision (plus a little for the graphs)."""
    params = sum(p.numel() for p in loaded.model.parameters())
    return int(params * dtype_bytes(dtype) * 1.05) + (16 << 20)


def export_loaded(loaded: LoadedModel, options: ExportOptions) -> ExportedModel:
    if options.dtype not in DTYPES:
        raise UserError(f"--dtype {options.dtype!r}: choose one of {list(DTYPES)}")
    if options.layers_per_block < 1:
        raise UserError(f"--layers-per-block {options.layers_per_block}: must be at least 1")
    out = Path(options.out_dir)
    needed = _export_bytes(loaded, options.dtype)
    check_output_dir(out, "the export", needed=needed, create=True)
    (out / BLOCKS_FILE).unlink(missing_ok=True)  # a stale blocks.json must never describe new files
    (out / CALIB_FILE).unlink(missing_ok=True)  # the calibration of the old export is not this export's
    with writing(out, needed):
        return _export_into(out, loaded, options)


def _export_into(out: Path, loaded: LoadedModel, options: ExportOptions) -> ExportedModel:
    torch_dtype = {"float16": torch.float16, "float32": torch.float32}[options.dtype]
    loaded.model.to(torch_dtype)  # in place: load_model already gives this dtype, so normally a no-op
    spec = loaded.spec
    family = get_family(spec.architecture)
    embed, layers, head = family.block_modules(loaded.model)
    examples = example_inputs(spec.hidden_size, torch_dtype, spec.vocab_size)
    specs = block_specs(family, spec.num_layers, options.layers_per_block, spec.hidden_size, options.dtype)
    blocks = []

    def module_of(block: BlockSpec) -> torch.nn.Module:
        return ({"embed": embed, "head": head}.get(block.kind) or layers(block.first_layer, block.last_layer)).eval()

    graphs = SharedGraphs(specs, module_of, examples)  # layer blocks of one size: one trace shared
    for block in tqdm(specs, desc="export", unit="block"):
        module, path = module_of(block), out / f"block_{block.index:03d}.onnx"
        files = save_block(graphs.model(block, module), path, needs_external_data(module, options.external_data_bytes))
        blocks.append(ExportedBlock(spec=block, files=tuple(FileRecord.of(out, f) for f in files)))
    tokenizer_dir = out / TOKENIZER_DIR
    loaded.tokenizer.save_pretrained(tokenizer_dir)
    exported = ExportedModel(
        model_id=loaded.source.model_id,
        model_hash=loaded.model_hash,
        model=spec,
        dtype=options.dtype,
        opset=OPSET,
        tokenizer_files=tuple(FileRecord.of(out, p) for p in sorted(tokenizer_dir.rglob("*")) if p.is_file()),
        blocks=tuple(blocks),
        inputs=export_inputs(loaded.model_hash, options),
    )
    write_blocks(out, exported)
    return exported


def export_model(options: ExportOptions, announce=lambda text: None) -> ExportedModel:
    """Reuse the export in `out_dir` if its inputs are unchanged and its files verify; else load the model in the
    export precision and write every block."""
    share_layer_graphs()  # a mistyped CETRT_SHARE_LAYER_GRAPHS is refused now, not after the model has loaded
    source = resolve_source(options.model)
    hash_ = model_hash(source)
    existing, why = reusable_export(Path(options.out_dir), export_inputs(hash_, options))
    if existing is not None:
        announce(f"export: {options.out_dir} is up to date ({why}); nothing to do")
        return existing
    announce(f"export: exporting ({why})")
    return export_loaded(load_model(options.model, dtype=options.dtype, known_hash=hash_), options)
