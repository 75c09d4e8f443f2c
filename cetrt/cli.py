"""Command lines: `ce-export`, `ce-build`, `ce-run`. Thin: options -> dataclass -> one stage call.

Stage modules (torch, onnxruntime, transformers) are imported inside each command, so `--help` is instant and
works without them. A `UserError` becomes one line on stderr and exit code 1 (an `Interrupted` run: 130 or 143);
an option value click refuses at parse time is one `error:` line and exit 1 too; a bug keeps its traceback.
Usage: `ce-run --engines engines/smollm2-135m --dataset ../shared/data/hellaswag/hellaswag_val.jsonl --limit 200`.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from cetrt.backends import BACKEND_NAMES
from cetrt.errors import UserError
from cetrt.options import NON_NEGATIVE, POSITIVE, MemoryBudget
from cetrt.spec import DEFAULT_WEIGHTS, DTYPES, TARGETS, WEIGHTS_LAYOUTS

_DATASET_HELP = ("HellaSwag jsonl path (official or reduced form), a local dataset directory, or a hub id "
                 "(default: ../shared/data/hellaswag/hellaswag_val.jsonl or $CETRT_HELLASWAG; the hub id "
                 "Rowan/hellaswag only where neither exists)")


def user_errors(command):
    """Turn a UserError into `error: <message>` and exit 1 (or the interrupted run's 130/143), no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(getattr(e, "exit_code", 1))

    return wrapper


class Command(click.Command):
    """A click command whose refused option values end as one `error:` line and exit 1, like every user error."""

    def main(self, *args, **kwargs):
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.UsageError as e:
            hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)


def command():
    return click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})


@command()
@click.option("--model", default="smollm2-135m", show_default=True,
              help="Hugging Face model directory, a .gguf file, or the preset 'smollm2-135m'.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Directory for the ONNX blocks.")
@click.option("--layers-per-block", default=1, show_default=True, type=POSITIVE, help="Decoder layers in each layers block.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True, help="Engine precision.")
@user_errors
def export_command(model, out_dir, layers_per_block, dtype):
    """Export a LLaMA or OPT model to per-block ONNX files and blocks.json."""
    from cetrt.export.pipeline import ExportOptions, export_model

    exported = export_model(ExportOptions(model=model, out_dir=out_dir, layers_per_block=layers_per_block, dtype=dtype),
                            announce=click.echo)
    click.echo(f"exported {len(exported.blocks)} blocks of {exported.model_id} ({dtype}) to {out_dir}")


@command()
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path), required=True, help="Export directory (blocks.json).")
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="cpu", show_default=True,
              help="The device the engines are for; measurements need to run on it.")
@click.option("--dataset", default=None, help="Items for the precision check and timing. " + _DATASET_HELP)
@click.option("--items", type=NON_NEGATIVE, default=32, show_default=True, help="Items run through FP16 and FP32 blocks (0: no precision check).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def calib_command(onnx_dir, target, dataset, items, quiet):
    """Check FP16 precision (adding FP32 islands where needed), measure this machine, choose the schedule:
    writes calib.json beside blocks.json."""
    from cetrt.calib.stage import CalibOptions, calibrate
    from cetrt.workload.hellaswag import default_dataset

    record = calibrate(CalibOptions(onnx_dir=onnx_dir, target=target, dataset=dataset or default_dataset(), precision_items=items,
                                    progress=not quiet), announce=click.echo)
    islands = record.precision.get("islands", [])
    schedule = record.schedule
    chosen = (f"{schedule['tokens_per_batch']:,} tokens per batch ({schedule['tokens_per_batch_reason']})"
              if "tokens_per_batch" in schedule else schedule["note"])
    if "layers_per_engine" in schedule:
        chosen += f"; {schedule['layers_per_engine']} layer(s) per engine ({schedule['layers_per_engine_reason']})"
    click.echo(f"calibrated {onnx_dir}: {len(islands)} FP32 island(s); {chosen}; wrote {onnx_dir / 'calib.json'}")


@command()
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path), required=True, help="Export directory (blocks.json).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Directory for engines and manifest.json.")
@click.option("--backend", type=click.Choice(BACKEND_NAMES), default="onnxruntime", show_default=True)
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="cpu", show_default=True)
@click.option("--check", is_flag=True,
              help="Parse and build for the target without its GPU (engines are not for running).")
@click.option("--max-length", type=POSITIVE, default=512, show_default=True,
              help="Longest packed row the engines accept (TensorRT optimization profiles).")
@click.option("--tokens-per-batch", type=POSITIVE, default=None,
              help="Largest batch, in padded tokens (default: calib.json's schedule, else 4096).")
@click.option("--optimization-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--weights", type=click.Choice(WEIGHTS_LAYOUTS), default=DEFAULT_WEIGHTS, show_default=True,
              help="inputs: one engine per block type, each block's weights in a file streamed into the engine's "
                   "weight inputs; inside: one engine per block with its weights.")
@click.option("--layers-per-engine", type=POSITIVE, default=None,
              help="Decoder layers merged into one engine (weights inputs): fewer engine calls per batch "
                   "(default: calib.json's choice from the measured per-call cost, else 1).")
@user_errors
def build_command(onnx_dir, out_dir, backend, target, check, max_length, tokens_per_batch, optimization_level, weights,
                  layers_per_engine):
    """Build one engine per exported block, and manifest.json."""
    from cetrt.build.engines import BuildOptions, build_engines
    from cetrt.workload.shapes import ShapePlan

    plan = ShapePlan(tokens_per_batch=tokens_per_batch, max_length=max_length) if tokens_per_batch else None
    manifest = build_engines(BuildOptions(onnx_dir=onnx_dir, out_dir=out_dir, backend=backend, target=target,
                                          check=check, shape_plan=plan, max_length=max_length, optimization_level=optimization_level,
                                          weights=weights, layers_per_engine=layers_per_engine), announce=click.echo)
    engines = len(manifest.engine_types) if manifest.engine_types else len(manifest.blocks)
    click.echo(f"built {engines} {backend} engines for {len(manifest.blocks)} blocks ({target}, weights {weights}) in {out_dir} "
               f"({manifest.engine_bytes / 2**20:.1f} MiB)")


@command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines directory (manifest.json).")
@click.option("--dataset", default=None, help=_DATASET_HELP)
@click.option("--limit", type=POSITIVE, default=None, help="Score only the first N items.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write results.json here.")
@click.option("--tokens-per-batch", type=POSITIVE, default=None,
              help="Padded tokens per batch (default: calib.json's schedule beside the engines, else 4096).")
@click.option("--length-multiple", type=POSITIVE, default=None,
              help="Pad rows to a multiple of this many tokens (default 8; engines with fixed profiles: their plan's).")
@click.option("--memory-budget", type=MemoryBudget(machine=True), default=None,
              help="Memory for engines and activations: a size (8GiB, 512MiB), or 'auto' (free memory). "
                   "Default: the target's budget from the manifest.")
@click.option("--chunk-tokens", type=POSITIVE, default=None,
              help="Cap on the padded tokens a chunk runs through one block before the next (default: as many as fit).")
@click.option("--prefetch-depth", type=click.IntRange(1, 4), default=None,
              help="Engines read ahead of the one computing, when streaming (default: calib.json's schedule, else 1).")
@click.option("--spill-dir", type=click.Path(path_type=Path), default=None,
              help="Where activations go when they spill to disk (default: the system's temp dir).")
@click.option("--spill", is_flag=True,
              help="Keep a chunk's hidden states on disk between blocks and stream the engines, whatever the budget: "
                   "one pass over the weights (the planner does this by itself only where it reads less).")
@click.option("--threads", type=POSITIVE, default=None, help="Intra-op threads for CPU backends (default: all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--devices", type=click.IntRange(1), default=1, show_default=True,
              help="Split the blocks into this many contiguous stages, one per device, as a pipeline over the "
                   "batches; --memory-budget is then per device (on CPU every stage runs on the same CPU).")
@user_errors
def run_command(engines, dataset, limit, json_path, tokens_per_batch, length_multiple, memory_budget, chunk_tokens,
                prefetch_depth, spill_dir, spill, threads, quiet, devices):
    """Score HellaSwag with prebuilt engines and print acc and acc_norm."""
    from cetrt.formats.results import write_results
    from cetrt.outputs import check_output_file
    from cetrt.runner.evaluate import RunOptions, evaluate
    from cetrt.runner.journal import journal_path, partial_path
    from cetrt.runner.report import summary_table
    from cetrt.workload.hellaswag import default_dataset

    if json_path:
        check_output_file(json_path, "--json")  # before the run; space is checked once the item count is known
    options = RunOptions(engines=engines, dataset=dataset or default_dataset(), limit=limit,
                         tokens_per_batch=tokens_per_batch, length_multiple=length_multiple,
                         memory_budget=memory_budget, chunk_tokens=chunk_tokens, prefetch_depth=prefetch_depth,
                         spill_dir=spill_dir, spill=spill, threads=threads,
                         partial_results=partial_path(json_path) if json_path else None,
                         journal=journal_path(json_path) if json_path else None, progress=not quiet,
                         devices=devices)
    results = evaluate(options, announce=click.echo)
    click.echo(summary_table(results))
    if json_path:
        write_results(json_path, results)  # on failure: a fallback file, named in the error; the journal stays
        click.echo(f"  results    {json_path}")
        for done_with in (options.journal, options.partial_results):
            done_with.unlink(missing_ok=True)


def quick_exit() -> bool:
    """Whether ce-run ends at once after a finished run (the default), or through the teardown (CETRT_QUICK_EXIT=0)."""
    from cetrt.switches import switch

    return switch("CETRT_QUICK_EXIT", default=True)


def run_main() -> None:
    """`ce-run` as a program: the command, then, after a finished run (its results written, the files closed), the
    process ends at once with exit code 0 instead of through the interpreter's teardown, in which the CUDA runtime,
    ONNX Runtime's provider and the page-locked pool free what the kernel frees anyway when the process ends.
    CETRT_QUICK_EXIT=0 keeps the teardown (the benchmark's baseline: `bench/gpu_speed.py exitab`). Failed and
    stopped runs leave through `sys.exit` as before; the command called in-process (tests) never ends the process."""
    quick = user_errors(quick_exit)()  # a bad value is refused before the run, not after it
    run_command.main()
    if quick:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@command()
@click.option("--model", required=True,
              help="A preset (llama-7b/13b/30b/65b, opt-6.7b/13b/30b/66b, smollm2-135m), a config.json, "
                   "or a model directory.")
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="orin-agx-32gb", show_default=True)
@click.option("--dataset", default=None,
              help="HellaSwag jsonl path or hub id (default: ../shared's reduced validation set if present).")
@click.option("--limit", type=POSITIVE, default=None, help="Predict for the first N items only.")
@click.option("--memory-budget", type=MemoryBudget(), default=None, help="A size (28GiB), or 'auto' (this machine's free memory). "
                                                     "Default: the target's budget.")
@click.option("--storage", default=None,
              help="nvme, emmc, sd, or a read bandwidth in GB/s (default: calib.json's measured, else nvme).")
@click.option("--calib", "calib_path", type=click.Path(path_type=Path), default=None,
              help="calib.json: its rates are used when it was measured on this target.")
@click.option("--tokens-per-batch", type=POSITIVE, default=None,
              help="Padded tokens per batch (default: the fastest of a few sizes).")
@click.option("--tokenizer", default=None, help="Tokenizer directory for counting (default: SmolLM2-135M's).")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Engine precision (default: the target's).")
@click.option("--prefetch-depth", type=click.IntRange(1, 4), default=None,
              help="Engines read ahead when streaming (default: calib.json's schedule, else 1).")
@click.option("--weights", type=click.Choice(WEIGHTS_LAYOUTS), default=DEFAULT_WEIGHTS, show_default=True,
              help="The engines' layout (ce-build --weights): sets what loading a block costs.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the prediction here.")
@click.option("--devices", type=click.IntRange(1), default=None,
              help="Devices as a pipeline of stages, the budget per device (default: the target's, v100x4: 4).")
@user_errors
def predict_command(model, target, dataset, limit, memory_budget, storage, calib_path, tokens_per_batch, tokenizer,
                    dtype, prefetch_depth, weights, json_path, devices):
    """Predict a whole HellaSwag run's time on a target, term by term, each with its source."""
    import json

    from cetrt.calib.predict import PredictOptions, predict_run
    from cetrt.outputs import check_output_file, write_with_fallback

    if json_path:
        check_output_file(json_path, "--json")
    prediction = predict_run(PredictOptions(
        model=model, target=target, dataset=dataset, limit=limit, memory_budget=memory_budget, storage=storage,
        calib=calib_path, tokens_per_batch=tokens_per_batch, tokenizer=tokenizer, dtype=dtype,
        prefetch_depth=prefetch_depth, weights=weights, devices=devices))
    click.echo(prediction.describe())
    if json_path:
        write_with_fallback(json_path, json.dumps(prediction.to_json(), indent=2) + "\n", "prediction")
        click.echo(f"  prediction {json_path}")
