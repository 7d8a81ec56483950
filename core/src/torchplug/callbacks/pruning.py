"""``ModelPruning``: prune parameters during training with ``torch.nn.utils.prune``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from copy import deepcopy
from functools import partial
from typing import TYPE_CHECKING, Any

import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

log = logging.getLogger(__name__)

#: The names ``pruning_fn`` accepts: (the function that prunes one parameter, the method ``global_unstructured`` takes)
_BUILT_IN = {
    "ln_structured": (torch_prune.ln_structured, torch_prune.LnStructured),
    "l1_unstructured": (torch_prune.l1_unstructured, torch_prune.L1Unstructured),
    "random_structured": (torch_prune.random_structured, torch_prune.RandomStructured),
    "random_unstructured": (torch_prune.random_unstructured, torch_prune.RandomUnstructured),
}

ParametersToPrune = Sequence[tuple[nn.Module, str]]


def _is_pruning_method_class(candidate: Any) -> bool:
    return inspect.isclass(candidate) and issubclass(candidate, torch_prune.BasePruningMethod)


def _per_epoch(value: Any, epoch: int) -> Any:
    """``value`` itself, or ``value(epoch)`` when it is callable (the arguments that may change every epoch)."""
    return value(epoch) if callable(value) else value


class ModelPruning(Callback):
    """Prune ``parameters_to_prune`` at the end of training epochs with ``torch.nn.utils.prune`` (Lightning's name).

    ``pruning_fn`` is one of ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"`` (needs
    ``pruning_dim`` and ``pruning_norm``), ``"random_structured"`` (needs ``pruning_dim``), or a
    ``BasePruningMethod`` subclass (with ``use_global_unstructured=True``). ``amount`` is a fraction (float), a count
    (int) or ``amount(epoch)``; ``apply_pruning`` and ``use_lottery_ticket_hypothesis`` are bools or
    ``f(epoch) -> bool``. Without ``parameters_to_prune``, every ``parameter_names`` parameter ("weight", "bias") of
    every leaf module is pruned (override ``filter_parameters_to_prune`` to choose). ``use_global_unstructured`` ranks
    all of them together rather than each on its own. The lottery ticket hypothesis resets the surviving weights to
    their values at setup (or fresh ones, ``resample_parameters``). ``make_pruning_permanent`` folds the masks into
    the weights at the end of training and in every saved checkpoint (the live model keeps its masks until then).
    ``verbose`` 1 logs the overall sparsity after each pruning, 2 each parameter's too.
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: Callable[..., Any] | str,
        parameters_to_prune: ParametersToPrune | None = (),
        parameter_names: list[str] | None = None,
        use_global_unstructured: bool = True,
        amount: int | float | Callable[[int], int | float] = 0.5,
        apply_pruning: bool | Callable[[int], bool] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
        resample_parameters: bool = False,
        pruning_dim: int | None = None,
        pruning_norm: int | None = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        self._parameter_names = tuple(parameter_names or self.PARAMETER_NAMES)
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise MisconfigurationError(
                    f"ModelPruning(parameter_names={list(self._parameter_names)}): {name} isn't in "
                    f"{self.PARAMETER_NAMES}"
                )
        self._global_kwargs: dict[str, Any] = {}
        if isinstance(pruning_fn, str):
            key = pruning_fn.lower()
            if key not in _BUILT_IN:
                raise MisconfigurationError(
                    f"ModelPruning(pruning_fn={pruning_fn!r}): `pruning_fn` is expected to be a str in "
                    f"{list(_BUILT_IN)} or a torch.nn.utils.prune.BasePruningMethod subclass"
                )
            options: dict[str, Any] = {}
            if key.endswith("_structured"):
                if pruning_dim is None:
                    raise MisconfigurationError(
                        f"ModelPruning(pruning_fn={key!r}): for structured pruning, `pruning_dim` should be provided "
                        "(the dimension whose slices are pruned)"
                    )
                options["dim"] = pruning_dim
                if key == "ln_structured":
                    if pruning_norm is None:
                        raise MisconfigurationError(
                            "ModelPruning: when requesting `ln_structured` pruning, the `pruning_norm` should be "
                            "provided (the n of the Ln norm, e.g. 1 or 2)"
                        )
                    options["n"] = pruning_norm
            function, method = _BUILT_IN[key]
            self._pruning_method_name = method.__name__
            if use_global_unstructured:
                self._global_kwargs = options
                pruning_fn = method
            else:
                pruning_fn = partial(function, **options)
        elif _is_pruning_method_class(pruning_fn):
            if not use_global_unstructured:
                raise MisconfigurationError(
                    f"ModelPruning(pruning_fn={pruning_fn.__name__}): a `BasePruningMethod` is currently only "
                    "supported with `use_global_unstructured=True`"
                )
            self._pruning_method_name = pruning_fn.__name__
        else:
            raise MisconfigurationError(
                f"ModelPruning(pruning_fn={pruning_fn!r}): `pruning_fn` is expected to be a str in {list(_BUILT_IN)} "
                "or a torch.nn.utils.prune.BasePruningMethod subclass (the class, not an instance)"
            )
        if use_global_unstructured and getattr(pruning_fn, "PRUNING_TYPE", None) != "unstructured":
            raise MisconfigurationError(
                f"ModelPruning: only an 'unstructured' pruning method is supported with "
                f"`use_global_unstructured=True`; {self._pruning_method_name} is "
                f"{getattr(pruning_fn, 'PRUNING_TYPE', None)!r}. Pass use_global_unstructured=False"
            )
        if isinstance(amount, bool) or not (isinstance(amount, (int, float)) or callable(amount)):
            raise MisconfigurationError(
                f"ModelPruning(amount={amount!r}): `amount` should be an int (a count), a float (a fraction) or "
                "a function of the epoch returning one"
            )
        if verbose not in (0, 1, 2):
            raise MisconfigurationError(
                f"ModelPruning(verbose={verbose!r}): `verbose` must be any of (0, 1, 2) (off, overall, per parameter)"
            )
        self.pruning_fn = pruning_fn
        self.amount = amount
        self._parameters_to_prune: ParametersToPrune = parameters_to_prune or ()
        self._use_global_unstructured = use_global_unstructured
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._verbose = verbose
        # for the lottery ticket: a copy of each pruned module as it was at setup, and which of its names are pruned
        self._initial_modules: list[tuple[nn.Module, list[tuple[nn.Module, str]]]] = []

    # ------------------------------------------------------------------------------------------------ what to prune
    def filter_parameters_to_prune(self, parameters_to_prune: ParametersToPrune = ()) -> ParametersToPrune:
        """Override to choose which ``(module, name)`` pairs to prune; returns them all by default."""
        return parameters_to_prune

    @staticmethod
    def sanitize_parameters_to_prune(
        pl_module: nn.Module, parameters_to_prune: ParametersToPrune = (), parameter_names: Sequence[str] = ()
    ) -> ParametersToPrune:
        """The ``(module, name)`` pairs to prune: those given, checked against ``pl_module``, or when none are given
        every ``parameter_names`` attribute that is an ``nn.Parameter`` of a module of ``pl_module`` that is not a
        container."""
        names = tuple(parameter_names) or ModelPruning.PARAMETER_NAMES
        from torchplug.module import Module

        containers = (Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)
        leaves = [m for m in pl_module.modules() if not isinstance(m, containers)]
        if not parameters_to_prune:
            return [(m, n) for n in names for m in leaves if isinstance(getattr(m, n, None), nn.Parameter)]
        if not isinstance(parameters_to_prune, (list, tuple)) or not all(
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and isinstance(pair[0], nn.Module)
            and isinstance(pair[1], str)
            for pair in parameters_to_prune
        ):
            raise MisconfigurationError(
                f"ModelPruning(parameters_to_prune={parameters_to_prune!r}): give a list of (nn.Module, "
                "'parameter name') pairs, e.g. [(model.layer, 'weight')]"
            )
        leaf_ids = {id(m) for m in leaves}
        missing_modules = [m for m, _ in parameters_to_prune if id(m) not in leaf_ids]
        missing_names = [n for m, n in parameters_to_prune if id(m) in leaf_ids and not hasattr(m, n)]
        if missing_modules or missing_names:
            raise MisconfigurationError(
                "ModelPruning: some provided `parameters_to_prune` don't exist in the model: modules "
                f"{missing_modules}, parameter names {missing_names}"
            )
        return list(parameters_to_prune)

    # ------------------------------------------------------------------------------------------------ pruning
    def apply_pruning(self, amount: int | float) -> None:
        """Prune ``parameters_to_prune`` by ``amount`` once (logging the sparsity when ``verbose``)."""
        before = [self._zeros_and_size(m, n) for m, n in self._parameters_to_prune] if self._verbose else []
        if self._use_global_unstructured:
            accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            options = {k: v for k, v in {**self._global_kwargs, "amount": amount}.items() if k in accepted}
            torch_prune.global_unstructured(
                self._parameters_to_prune, pruning_method=self.pruning_fn, **options
            )
        else:
            for module, name in self._parameters_to_prune:
                self.pruning_fn(module, name=name, amount=amount)
        if self._verbose:
            after = [self._zeros_and_size(m, n) for m, n in self._parameters_to_prune]
            self._log_sparsity(before, after, amount)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the weights that survived pruning to their values at setup (the lottery ticket hypothesis,
        arXiv:1803.03635), or to freshly initialised ones with ``resample_parameters``."""
        for initial, pairs in self._initial_modules:
            source = initial
            if self._resample_parameters and callable(getattr(initial, "reset_parameters", None)):
                source = deepcopy(initial)  # the setup values stay for the next reset
                source.reset_parameters()
            for module, name in pairs:
                # a pruned parameter lives on as `<name>_orig`, the mask applied on top at every forward
                target = getattr(module, f"{name}_orig", None)
                if target is None:
                    target = getattr(module, name, None)
                value = getattr(source, name, None)
                if isinstance(target, Tensor) and isinstance(value, Tensor):
                    target.data = value.data.to(target.device)

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Fold every pruning mask of ``module``'s submodules into its parameter and drop the masks."""
        for submodule in module.modules():
            for key, hook in list(submodule._forward_pre_hooks.items()):
                if isinstance(hook, torch_prune.BasePruningMethod):
                    hook.remove(submodule)
                    del submodule._forward_pre_hooks[key]

    def _run_pruning(self, epoch: int) -> None:
        amount = _per_epoch(self.amount, epoch)
        if not _per_epoch(self._apply_pruning, epoch) or not amount:
            return
        self.apply_pruning(amount)
        if _per_epoch(self._use_lottery_ticket_hypothesis, epoch):
            self.apply_lottery_ticket_hypothesis()

    @staticmethod
    def _zeros_and_size(module: nn.Module, name: str) -> tuple[int, int]:
        mask = getattr(module, f"{name}_mask", None)
        if mask is None:  # not pruned yet: nothing is masked
            parameter = getattr(module, name)
            return 0, parameter.numel()
        return int((mask == 0).sum()), mask.numel()

    def _log_sparsity(
        self, before: list[tuple[int, int]], after: list[tuple[int, int]], amount: float
    ) -> None:
        from torchplug.utilities import rank_zero_only

        if rank_zero_only.rank != 0:
            return
        total = sum(size for _, size in after)
        was, now = sum(z for z, _ in before), sum(z for z, _ in after)
        method = self._pruning_method_name
        log.info(
            f"Applied `{method}`. Pruned: {was}/{total} ({was / total:.2%}) -> {now}/{total} ({now / total:.2%})"
        )
        if self._verbose == 2:
            for (module, name), (was, size_was), (now, size) in zip(self._parameters_to_prune, before, after):
                log.info(
                    f"Applied `{method}` to `{module!r}.{name}` with amount={amount}. Pruned: "
                    f"{was} ({was / size_was:.2%}) -> {now} ({now / size:.2%})"
                )

    # ------------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        pairs = self.sanitize_parameters_to_prune(pl_module, self._parameters_to_prune, self._parameter_names)
        self._parameters_to_prune = self.filter_parameters_to_prune(pairs)
        self._initial_modules = []
        if self._use_lottery_ticket_hypothesis:
            by_module: dict[int, tuple[nn.Module, list[tuple[nn.Module, str]]]] = {}
            for module, name in self._parameters_to_prune:
                by_module.setdefault(id(module), (deepcopy(module), []))[1].append((module, name))
            self._initial_modules = list(by_module.values())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._prune_on_train_epoch_end and not trainer.sanity_checking:
            self._run_pruning(pl_module.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: Module) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent(pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: Module, checkpoint: dict[str, Any]) -> None:
        if not self._make_pruning_permanent:
            return
        # The checkpoint gets the pruned weights (`orig * mask`) under their own names; the live model keeps
        # training with its masks.
        state = checkpoint.get("state_dict", {})
        for key in [k[: -len("_mask")] for k in state if k.endswith("_mask") and f"{k[:-5]}_orig" in state]:
            original, mask = state.pop(f"{key}_orig"), state.pop(f"{key}_mask")
            state[key] = (mask.to(original.dtype) * original).detach()


__all__ = ["ModelPruning"]
