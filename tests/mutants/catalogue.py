"""The planted bugs of the gauntlet: each one exact text in one file replaced, and the tests that must catch it.

The old text must be found exactly once; when the code moves on and it is not, the gauntlet reports
"anchor missing: update the mutant" and fails. Tests are pytest node ids, run in a copy of the repository
with the bug planted (tests/mutants/gauntlet.py).
Usage: `from catalogue import MUTANTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

GREEDY = "tests/runner/test_greedy.py::test_greedy_is_true_on_the_models_own_continuation[llama]"
LM_EVAL = "tests/runner/test_lm_eval_end_to_end.py::test_scores_and_metrics_equal_lm_eval[llama]"
ISLANDS = "tests/export/test_fp32_islands.py::test_norm_statistics_and_softmax_take_fp32_inputs_in_an_fp16_export"
SPILL = "tests/runner/test_spill_tier.py"
SCHEDULE = "tests/calib/test_schedule_choice.py"
BY_HAND = "tests/calib/test_predict_by_hand.py"
STDERR = "tests/test_cli.py::test_errors_go_to_stderr_alone"
RSS = "tests/runner/test_rss_budget.py"
STORAGE = "tests/test_storage.py"
RESIDENT_LOADING = "tests/runner/test_resident_loading.py"
LENGTH = "tests/runner/test_packing.py::test_rows_pad_to_multiples_of_8_by_default_and_the_option_changes_it"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # The canary: proves the copy is what the tests import (an untouched checkout would pass).
    Mutant("canary: cetrt fails to import in the copy", "cetrt/__init__.py",
           '__version__ = "0.1.0"', '__version__ = "0.1.0"\nraise ImportError("the gauntlet canary")', (SCHEDULE,)),
    # The 13 bugs of issue 15.
    Mutant("head's greedy flag always False", "cetrt/families/common.py",
           "greedy = torch.argmax(logits, dim=-1) == target_ids", "greedy = torch.argmax(logits, dim=-1) < 0",
           (GREEDY,)),
    Mutant("target delimiter empty", "cetrt/workload/hellaswag.py", 'TARGET_DELIMITER = " "', 'TARGET_DELIMITER = ""',
           (LM_EVAL, "tests/runner/test_harness_parity.py::test_token_split_equals_the_harness_encode_pair[True]")),
    Mutant("acc_norm divides by bytes", "cetrt/workload/tokens.py",
           "float(len(k) - len(TARGET_DELIMITER)) for _, k in pairs",
           'float(len(k[len(TARGET_DELIMITER):].encode("utf-8"))) for _, k in pairs',
           ("tests/runner/test_harness_parity.py::test_pred_and_pred_norm_equal_the_harness_process_results",)),
    Mutant("I/O binding silently off", "cetrt/backends/onnxruntime.py",
           'if target.device == "cuda" or settings.io_binding:', 'if target.device == "cuda":',
           ("tests/runner/test_cuda_path.py::test_io_binding_path_scores_like_the_plain_path[llama]",)),
    Mutant("an input bound once and never again (stale weights or batch)", "cetrt/backends/onnxruntime.py",
           "if self._bound.get(name) != where:", "if name not in self._bound:",
           ("tests/runner/test_cuda_path.py::test_io_binding_path_scores_like_the_plain_path[llama]",)),
    Mutant("RMSNorm statistics in FP16", "cetrt/families/common.py",
           "    x32 = x.float()\n    x32 = x32 / torch.sqrt", "    x32 = x\n    x32 = x32 / torch.sqrt",
           (ISLANDS + "[llama-ReduceMean]",)),
    Mutant("LayerNorm in FP16", "cetrt/families/common.py",
           "nn.functional.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)",
           "nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)",
           (ISLANDS + "[opt-LayerNormalization]",)),
    Mutant("spilled activations kept in memory", "runner/evaluate.py",
           "activations = DiskActivations(meter, options.spill_dir)",
           "activations = MemoryActivations(meter, activation_bytes_per_token(manifest.model, manifest.dtype))",
           (SPILL,)),
    Mutant("meter under-counts streamed engines", "runner/executor.py",
           "Prefetcher(engines_dir, sequence, depth, stats, on_start=meter.add, plan=plan,",
           "Prefetcher(engines_dir, sequence, depth, stats, on_start=lambda n: None, plan=plan,", (SPILL,)),
    Mutant("calib always picks the largest batch", "calib/schedule.py",
           'chosen = min((c for c in compute if c["flop_per_s"] >= NEAR_BEST * best), key=lambda c: c["tokens_per_batch"])',
           'chosen = max(compute, key=lambda c: c["tokens_per_batch"])', (SCHEDULE,)),
    Mutant("ce-predict's total is compute only", "calib/predict.py",
           "        total_s=total_s, spill_s=spill_s,\n    )",
           "        total_s=sum(s[2] for s in steps), spill_s=spill_s,\n    )", (BY_HAND,)),
    Mutant("error: printed to stdout", "cetrt/cli.py",
           'click.echo(f"error: {e}", err=True)', 'click.echo(f"error: {e}")', (STDERR,)),
    # More, aimed at the new tests.
    Mutant("attention softmax in FP16", "cetrt/families/common.py",
           "torch.softmax(scores.float() + mask.unsqueeze(1), dim=-1).to(v.dtype)",
           "torch.softmax(scores + mask.unsqueeze(1).to(scores.dtype), dim=-1)", (ISLANDS + "[llama-ReduceMean]",)),
    Mutant("endings see each other in the packed mask (built in the graph since 2026-12-03)", "cetrt/families/common.py",
           "allowed = causal & ((key == 0) | (key == query)) &", "allowed = causal &",
           ("tests/runner/test_packing.py::test_mask_context_causal_endings_see_context_and_themselves_only", LM_EVAL)),
    Mutant("an ending is greedy with one token missed", "runner/scoring.py",
           "greedy=tuple(m == 0 for m in missed", "greedy=tuple(m <= 1 for m in missed", (GREEDY,)),
    Mutant("no BOS on the requests", "cetrt/workload/tokens.py",
           "((plain, True), (prefixed, False))", "((plain, False), (prefixed, False))", (LM_EVAL,)),
    Mutant("meter never counts an open engine", "runner/executor.py",
           "        self._meter.add(engine_bytes(block))\n        return session",
           "        return session", (SPILL,)),
    Mutant("spill files left behind", "runner/executor.py",
           "    def close(self) -> None:\n        shutil.rmtree(self._dir, ignore_errors=True)",
           "    def close(self) -> None:\n        pass", (SPILL,)),
    Mutant("streamed engines never released", "runner/executor.py",
           "        self._sessions.pop(block.spec.index).close()\n        self._meter.sub(engine_bytes(block))",
           "        self._meter.sub(engine_bytes(block))", (RSS,)),
    Mutant("reads hidden from one token too few", "calib/schedule.py",
           'hide_tokens = int(read_s / chosen["s_per_token"]) + 1', 'hide_tokens = int(read_s / chosen["s_per_token"])',
           (SCHEDULE,)),
    Mutant("ce-predict ignores the read-ahead", "calib/predict.py",
           "total_s, waited_s = pipeline_s(steps, plan.prefetch_depth, plan.loads_as_read)",
           "total_s, waited_s = pipeline_s(steps, 0)",
           (BY_HAND,)),
    # Issue 12: the streaming check is the record's chunk digest (xxh3-128, or sha256 in older records).
    Mutant("reader skips the chunk digest check", "cetrt/storage.py",
           "if record is not None and not record.chunk_matches(index, view[start : start + real]):",
           "if False:", (STORAGE,)),
    Mutant("chunks checked by the current digest whatever the record says", "cetrt/files.py",
           "return CHUNK_DIGESTS[self.chunk_digest](data) == self.chunks[index]",
           "return CHUNK_DIGESTS[CHUNK_DIGEST](data) == self.chunks[index]", (STORAGE,)),
    Mutant("an unknown chunk digest accepted at open", "cetrt/files.py",
           "if algorithm not in CHUNK_DIGESTS:", "if algorithm not in CHUNK_DIGESTS and False:", (STORAGE,)),
    # 2026-12-03: rows padded to a given multiple; the third tier's traffic stated once.
    Mutant("ce-run ignores --length-multiple", "runner/evaluate.py",
           'multiple = {"length_multiple": options.length_multiple} if options.length_multiple else {}',
           "multiple = {}", (LENGTH,)),
    Mutant("the spill crosses the disk once a block", "cetrt/plan.py",
           "return (block > 0) + (block < blocks - 1)", "return 1", ("tests/calib/test_predict.py",)),
    Mutant("streamed chunks as large as memory allows, the last one the remainder", "cetrt/plan.py",
           "return min(tokens, -(-total // n) + largest)", "return tokens",
           ("tests/runner/test_streaming.py::test_streamed_chunks_split_the_tokens_evenly_in_as_many_passes",)),
    Mutant("calib times batches cut from its few items, half full", "calib/schedule.py",
           "filled = (same * -(-count // len(same)))[:count]", "filled = same",
           ("tests/calib/test_schedule_choice.py::test_calib_times_full_batches_of_each_size_typical_lengths_first",)),
    Mutant("calib times a new batch shape's second run", "calib/schedule.py",
           "WARM_RUNS = 2  #", "WARM_RUNS = 1  #",
           ("tests/calib/test_schedule_choice.py::test_a_batch_is_timed_at_its_steady_rate_not_on_its_first_runs",)),
    Mutant("the plan never says one-layer engines would read the weights fewer times", "cetrt/plan.py",
           "if single.passes < plan.passes:", "if single.passes > plan.passes:",
           ("tests/runner/test_streaming.py::test_a_budget_that_merged_engines_read_more_often_hints_at_one_layer_engines",)),
    # 2026-12-04: resident engines loaded as they arrive; the first reads beside the engine types' preparation.
    Mutant("the resident loader never frees a read slot (the executor's pace)", "runner/executor.py",
           "                self._load_in_order(taken)\n                self._prefetcher.done()\n",
           "                self._load_in_order(taken)\n",
           (RESIDENT_LOADING + "::test_every_block_is_read_and_loaded_before_the_executor_asks_for_the_first",)),
    Mutant("the engine types made ready before the first read", "runner/evaluate.py",
           "    tokenize_s = time.perf_counter() - tokenize_start\n",
           "    tokenize_s = time.perf_counter() - tokenize_start\n    preparing.wait()\n",
           (RESIDENT_LOADING + "::test_the_first_reads_start_while_the_engine_types_are_made_ready",)),
    Mutant("CETRT_LOAD_AS_READ=0 ignored (no baseline for the A/B)", "runner/evaluate.py",
           'return switch("CETRT_LOAD_AS_READ", default=True)', "return True",
           (RESIDENT_LOADING + "::test_the_old_pace_on_request_loads_on_the_executor_and_scores_the_same",)),
    Mutant("ce-predict has the executor load resident blocks", "calib/predict.py",
           "        if loads_as_read:", "        if False:",
           ("tests/calib/test_predict.py::test_blocks_loaded_as_they_arrive_keep_reading_through_a_slow_block",
            BY_HAND)),
    Mutant("calib weighs the call cost against a layer on its merge batches, not the schedule's", "calib/schedule.py",
           'layers_per_engine(measured.get("merge"), num_layers, chosen, measured.get("layers_per_block", 1))',
           'layers_per_engine(measured.get("merge"), num_layers)',
           (SCHEDULE + "::test_the_call_cost_is_weighed_against_a_layer_on_the_schedules_own_batches",)),
    Mutant("a resident store's reader waits for the engine types' preparation again", "runner/executor.py",
           "                if not self._prepared(0) and sum(", "                if False and sum(",
           ("tests/runner/test_resident_loading.py::test_the_reader_runs_ahead_of_a_preparation_still_making_the_engine_types",)),
    Mutant("a run keeps Python's 5 ms GIL hand-over while its readers work", "runner/evaluate.py",
           "    with StopOnSignal() as stop, readers_first():", "    with StopOnSignal() as stop:",
           ("tests/test_storage.py::test_a_run_hands_the_gil_to_its_readers_within_half_a_millisecond",)),
    Mutant("calib's sustained pass times the GPU before heating it (boost clocks)", "calib/schedule.py",
           "    while heated < sustain_s:", "    while False:",
           (SCHEDULE + "::test_the_sustained_pass_times_a_chunk_of_batches_after_heating_the_gpu",)),
    Mutant("ce-predict ignores calib's sustained rates (short-burst clocks)", "calib/rates.py",
           'return rate * float(row["s_per_token"]) / float(sustained) if sustained else rate', "return rate",
           (SCHEDULE + "::test_rates_are_taken_at_sustained_clocks_where_calib_measured_them",)),
    Mutant("a continuation alone after any whitespace Python knows, not only the pattern's", "cetrt/workload/pair_split.py",
           "continuation[:1] in ASCII_WHITESPACE", "continuation[:1].isspace()",
           ("tests/runner/test_pair_split.py::test_a_boundary_inside_one_split_is_cut_the_whole_way",)),
    Mutant("a continuation alone though an added token strips the whitespace after it", "cetrt/workload/pair_split.py",
           "if token.rstrip or any(", "if any(",
           ("tests/runner/test_pair_split.py",)),
    Mutant("a continuation alone though a normalizer runs over the text", "cetrt/workload/pair_split.py",
           'return state.get("type") == "Sequence" and not state.get("normalizers")',
           'return state.get("type") == "Sequence"',
           ("tests/runner/test_pair_split.py::test_a_normalizer_keeps_the_whole_way_and_an_empty_one_does_not",)),
    Mutant("RoPE's rotate-half negates the wrong half", "cetrt/families/llama.py",
           "rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)",
           "rotated = torch.cat((x[..., half:], -x[..., :half]), dim=-1)",
           (LM_EVAL, "tests/families/test_families.py::test_make_engines_and_ce_run_score_like_hugging_face[qwen2]")),
    Mutant("the reader names only its own read's buffers, not the next one's", "cetrt/storage.py",
           "READS_PREPARED = 2", "READS_PREPARED = 1",
           (STORAGE + "::test_the_reader_asks_for_the_next_reads_buffer_before_it_takes_this_ones",)),
    Mutant("the pinned pool makes buffers ahead though free ones would serve", "cetrt/backends/cuda_device.py",
           "for _ in range(count - len(self._free.get(size, ())) - self._coming[size]):",
           "for _ in range(count - self._coming[size]):",
           ("tests/backends/test_cuda_device.py::test_prepared_buffers_are_made_on_the_pools_thread_and_taken_without_a_second_allocation",)),
    Mutant("a take makes its own buffer while the pool's thread makes one for it", "cetrt/backends/cuda_device.py",
           "            if not self._free.get(size) and self._coming[size]:", "            if False:",
           ("tests/backends/test_cuda_device.py::test_a_take_waits_for_the_block_on_its_way_instead_of_making_another",)),
    Mutant("every ending's first token scored from the row's first position", "cetrt/workload/packing.py",
           "score_index = np.where(j == 0, ctx_len[doc_of[e]] - 1,", "score_index = np.where(j == 0, 0,",
           ("tests/runner/test_packing.py",)),
    Mutant("a mistyped switch quietly runs the default", "cetrt/switches.py",
           'if value not in ("", "0", "1"):', 'if value not in ("", "0", "1") and False:',
           ("tests/test_switches.py",)),
)
