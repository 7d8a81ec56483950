"""Evaluation: ``validate``/``test``/``predict`` as stages of their own, and the validation inside ``fit``.

Lightning's order for one evaluation: ``on_<stage>_model_eval`` (the module's hook; by default ``trainer.model.eval()``),
``on_<stage>_start``, ``on_<stage>_epoch_start``, per batch ``on_<stage>_batch_start``/``_end`` around the step,
``on_<stage>_epoch_end``, ``on_<stage>_end``, then ``on_<stage>_model_train`` when the module overrides it (else every
submodule gets back the train/eval mode it had). Steps run under ``torch.inference_mode()`` (``Trainer(inference_mode=
False)``: ``torch.no_grad()``, as does a strategy whose ``supports_inference_mode`` is False).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from torchplug import _data, _profiling
from torchplug._errors import ConflictError
from torchplug._results import Results
from torchplug._states import RunningStage
from torchplug.callbacks.prediction_writer import BasePredictionWriter
from torchplug.utilities import move_data_to_device

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

EVAL_NAMES = {"validate": "validation", "test": "test", "predict": "predict"}
_STAGES = {"validate": RunningStage.VALIDATING, "test": RunningStage.TESTING, "predict": RunningStage.PREDICTING}
_KINDS = {"validate": "val", "test": "test", "predict": "predict"}

# One loader of an evaluation: its dataloader_idx, what to iterate, how many batches.
Plan = list[tuple[int, Any, "int | float"]]


class Evaluation:
    """The evaluation part of :class:`torchplug._loop.Loop` (whose attributes it uses)."""

    trainer: Trainer
    replacement_plan: Plan | None

    def evaluate_stage(self, stage: str, given: Any, verbose: bool = True, return_predictions: bool = True) -> Any:
        """``validate``/``test``/``predict`` as a stage of their own."""
        trainer = self.trainer
        kind = _KINDS[stage]
        if self.heartbeat is not None:
            self.heartbeat.begin({"validate": "validating", "test": "testing", "predict": "predicting"}[stage])
        trainer.logged_metrics.clear()
        self._log_hyperparams()
        data = _data.source(trainer, kind, given, stage)
        if data is None:
            raise _data.missing(kind, stage)
        plan = self.eval_plan(data, kind, stage, getattr(trainer, f"limit_{kind}_batches"))
        trainer._results = None
        result = self.evaluate(stage, plan, return_predictions=return_predictions)
        if verbose and stage != "predict" and trainer.is_global_zero and result:
            _print_results(result, stage)
        return result

    def eval_plan(self, data: Any, kind: str, stage: str, limit: int | float) -> Plan:
        """The loaders of an evaluation, after the strategy set them up, with their batch counts (also sets
        ``trainer.num_<kind>_batches`` and what ``trainer.<kind>_dataloaders`` returns)."""
        trainer = self.trainer
        loader = _data.combined(trainer, data, stage, "sequential", kind)
        if trainer.state.fn == "fit" and trainer.overfit_batches > 0:
            _data.without_shuffling(loader, kind)
        self.index_recorders: dict[int, Any] = {}
        if stage == "predict" and any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            recorded = [_data.recording_indices(leaf) for leaf in loader.flattened]
            loader.flattened = [leaf for leaf, _ in recorded]
            self.index_recorders = {i: recorder for i, (_, recorder) in enumerate(recorded)}
        leaves = loader.flattened
        counts = [_data.num_batches(leaf, limit, f"limit_{kind}_batches") for leaf in leaves]
        setattr(trainer, f"num_{kind}_batches" if kind != "val" else "num_val_batches", counts)
        trainer._data[kind] = loader.iterables
        if loader.mode == "sequential":
            return [(i, leaf, n) for i, (leaf, n) in enumerate(zip(leaves, counts))]
        loader.limits = counts  # several loaders read together: one stream of combined batches
        return [(0, (batch for batch, _, _ in loader), math.inf)]

    def evaluate(self, stage: str, plan: Plan, return_predictions: bool = True) -> Any:
        """One pass over evaluation loaders: per-loader metrics, or the predictions of ``predict``."""
        trainer = self.trainer
        several = len(plan) > 1
        plan = [(i, loader, n) for i, loader, n in plan if n]  # a loader limited to 0 batches is skipped
        if not plan:
            return [] if stage != "predict" else None
        if not _data.takes_iterator(getattr(self.module, f"{EVAL_NAMES[stage]}_step")):
            self._check_dataloader_idx(stage, several)
        trainer._results = Results(trainer, training=False)
        outer_stage = trainer.state.stage
        if not trainer.sanity_checking:
            trainer.state.stage = _STAGES[stage]
        # predictions are kept (on the host, as in Lightning) to return them, or for a writer that writes them all
        # at the epoch's end
        writers = [c for c in trainer.callbacks if isinstance(c, BasePredictionWriter)]
        keep = stage == "predict" and (return_predictions or any(w.interval != "batch" for w in writers))
        try:
            with self.evaluation_context():  # the hooks too, as in Lightning
                outputs, per_loader, logged = self._run_evaluation(stage, plan, several, keep)
        finally:
            trainer.state.stage = outer_stage
        if stage == "predict":
            return (outputs[0] if len(outputs) == 1 else outputs) if return_predictions else None
        count = len(per_loader)
        return [{k: float(v) for k, v in values.items()} for values in trainer._results.per_dataloader(logged, count)]

    def _run_evaluation(self, stage: str, plan: Plan, several: bool, keep: bool) -> Any:
        trainer, module, ops, results = self.trainer, self.module, self.ops, self.trainer._results
        name, sanity = EVAL_NAMES[stage], trainer.sanity_checking
        step_name = f"{name}_step"
        method = getattr(module, step_name)
        takes_iterator = _data.takes_iterator(method)
        step_args = _data.step_arguments(method, several)
        modes = {m: m.training for m in trainer.model.modules()}
        self.call_module(f"on_{name}_model_eval")
        self.call(f"on_{name}_start")
        if self.replacement_plan is not None:  # a search in on_*_start loaded the data again
            plan, self.replacement_plan = [(i, loader, n) for i, loader, n in self.replacement_plan if n], None
        self.call(f"on_{name}_epoch_start")
        outputs: list[list[Any]] = []
        per_loader: list[set[str]] = []
        self.current_batch_indices, self.epoch_batch_indices = None, []
        recorders = getattr(self, "index_recorders", {}) if stage == "predict" else {}
        beat = self.heartbeat
        # A stage of its own may stop between batches; with several processes (whose loaders may differ in length)
        # and inside fit (whose checkpoint would skip the rest of the validation) it runs to its end.
        stop_check = self.stop_check if self.stage != "fit" and trainer.world_size == 1 else None
        stop_due = stop_check.due if stop_check is not None else None
        logged: dict[str, torch.Tensor] = {}
        if takes_iterator:
            outputs = [self._iterator_steps(name, plan, several)]
            per_loader = [set(results.metrics)]
            plan = []
        for dl_idx, loader, count in plan:
            _data.set_epoch([loader], trainer.current_epoch)
            results.dataloader_idx = dl_idx if several else None
            before, collected = set(results.metrics), []
            extra = (dl_idx,) if several else ()
            recorder, indices = recorders.get(dl_idx), []
            self.epoch_batch_indices.append(indices)
            for batch_idx, batch in self._eval_batches(loader, count, dl_idx):
                if recorder is not None:
                    self.current_batch_indices = recorder.seen[batch_idx]
                    if keep:
                        indices.append(self.current_batch_indices)
                results.new_batch(batch)
                self.call(f"on_{name}_batch_start", batch, batch_idx, *extra)
                self.current_hook = step_name
                output = ops.forward(name, step_args(batch, batch_idx, dl_idx))
                self.current_hook = None
                ops.on_batch_end(name, batch_idx)
                self.call(f"on_{name}_batch_end", output, batch, batch_idx, *extra)
                if results.step_metrics and not sanity:  # at the loader's own count of logged steps
                    self.write_eval_step_logs(dl_idx)
                if keep:
                    collected.append(move_data_to_device(output, "cpu"))
                if beat is not None:
                    beat()
                if stop_due is not None and stop_due():
                    raise stop_check.stop()
            outputs.append(collected)
            per_loader.append(set(results.metrics) - before)
            if several:  # each loader's epoch values when it is done, as Lightning computes them
                logged.update(results.epoch_end(dataloader_idx=dl_idx))
        results.dataloader_idx = None
        results.new_batch(None)
        self.predictions = outputs[0] if len(outputs) == 1 else outputs
        logged.update(results.epoch_end())  # the steps' epoch values, for the epoch-end hooks to read
        self.call(f"on_{name}_epoch_end")
        logged.update(results.epoch_end())
        results.reset_metric_states()
        if stage != "predict" and not sanity:
            self.write_logs(dict(logged), step=None)
        self.call(f"on_{name}_end")
        if name != "predict" and f"on_{name}_model_train" in self.module_hooks:
            self.call_module(f"on_{name}_model_train")
        else:
            for submodule, training in modes.items():
                submodule.training = training
        return outputs, per_loader, logged

    def _check_dataloader_idx(self, stage: str, several: bool) -> None:
        """``dataloader_idx`` is passed exactly when there are several loaders: a step or batch hook that requires it
        with one loader, or cannot take it with several, is an error now (Lightning's messages)."""
        name, module, kind = EVAL_NAMES[stage], self.module, _KINDS[stage]
        for method in (f"{name}_step", f"on_{name}_batch_start", f"on_{name}_batch_end"):
            function = getattr(module, method, None)
            try:
                params = inspect.signature(function).parameters if function is not None else {}
            except (TypeError, ValueError):
                continue
            index = params.get("dataloader_idx")
            where = f"`{type(module).__name__}.{method}()`"
            if not several and index is not None and index.default is inspect.Parameter.empty:
                raise ConflictError(
                    f"You provided only a single `{kind}_dataloader`, but have included `dataloader_idx` in {where}. "
                    "Either remove the argument or give it a default value i.e. `dataloader_idx=0`."
                )
            variadic = any(p.kind is p.VAR_POSITIONAL for p in params.values())
            if several and params and index is None and not variadic and method in self.module_hooks | {
                    f"{name}_step": None}:  # fmt: skip
                raise ConflictError(
                    f"You provided multiple `{kind}_dataloader`s, but no `dataloader_idx` argument in {where}. Try "
                    "adding `dataloader_idx=0` to its signature."
                )

    def _eval_batches(self, loader: Any, count: int | float, dl_idx: int) -> Iterator[tuple[int, Any]]:
        prepare, fetch = self.prepare, _profiling.eval_fetch_action(self.trainer)
        batches = _profiling.fetched(self.trainer, loader, fetch)
        for batch_idx, batch in enumerate(_data.limited(batches, count)):
            yield batch_idx, prepare(batch, dl_idx)

    def _iterator_steps(self, name: str, plan: Plan, several: bool) -> list[Any]:
        """Steps that read the batches themselves (``validation_step(self, dataloader_iter)``): one iterator over
        every loader in turn; the batch hooks get what the step read last, as in Lightning."""
        results, collected = self.trainer._results, []
        fetch = _profiling.eval_fetch_action(self.trainer)
        items = ((batch, i, dl_idx) for dl_idx, loader, count in plan
                 for i, batch in enumerate(_data.limited(_profiling.fetched(self.trainer, loader, fetch), count)))  # fmt: skip
        data = _data.StepIterator(items, self.prepare)
        while data.has_next():
            batch, batch_idx, dl_idx = data.last
            self.call(f"on_{name}_batch_start", batch, batch_idx, *((dl_idx,) if several else ()))
            self.current_hook = f"{name}_step"
            output = self.ops.forward(name, (data,))
            self.current_hook = None
            batch, batch_idx, dl_idx = data.last
            results.dataloader_idx = dl_idx if several else None
            self.ops.on_batch_end(name, batch_idx)
            self.call(f"on_{name}_batch_end", output, batch, batch_idx, *((dl_idx,) if several else ()))
            collected.append(output)
        return collected

    def evaluation_context(self) -> Any:
        """``torch.inference_mode()``, unless turned off, unsupported by the strategy, or the process group is gloo's
        (whose collectives refuse inference tensors; Lightning's rule): then ``torch.no_grad()``. Validation within
        ``fit`` always runs under ``torch.no_grad()``, as Lightning's: what its hooks create or change (a pruning
        mask, a parameter) must stay usable by the training that follows."""
        trainer = self.trainer
        if self.stage == "fit":
            return torch.no_grad()
        gloo = torch.distributed.is_available() and torch.distributed.is_initialized() and (
            torch.distributed.get_backend() == "gloo")  # fmt: skip
        if trainer.inference_mode and getattr(trainer.strategy, "supports_inference_mode", True) and not gloo:
            return torch.inference_mode()
        return torch.no_grad()


def _print_results(results: list[dict[str, float]], stage: str) -> None:
    """The table Lightning prints after ``validate``/``test`` with ``verbose=True``."""
    rows = [(f"{k}" + (f" (dataloader {i})" if len(results) > 1 else ""), v)
            for i, metrics in enumerate(results) for k, v in metrics.items()]  # fmt: skip
    if not rows:
        return
    title = "Validate metric" if stage == "validate" else "Test metric"
    width = max(len(title), *(len(k) for k, _ in rows))
    line = "─" * (width + 26)
    print(line)
    print(f"{title:>{width}}  {'DataLoader 0' if len(results) == 1 else 'Value':>22}")
    print(line)
    for key, value in rows:
        print(f"{key:>{width}}  {value:>22.10g}")
    print(line)
