"""``BaseFinetuning`` and ``BackboneFinetuning``: freeze parts of a model, then unfreeze them into new param groups."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback
from torchplug.utilities import rank_zero_warn

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

log = logging.getLogger(__name__)

Modules = nn.Module | Iterable[nn.Module | Iterable[Any]]


def multiplicative(epoch: int) -> float:
    """``BackboneFinetuning``'s default ``lambda_func``: the backbone's learning rate doubles every epoch."""
    return 2.0


class BaseFinetuning(Callback):
    """Freeze modules before training and unfreeze them later into new optimizer param groups (Lightning's name).

    Subclasses implement ``freeze_before_training(pl_module)`` (at setup, before ``configure_optimizers``: freeze
    with ``self.freeze``) and ``finetune_function(pl_module, epoch, optimizer)`` (at every training epoch start, for
    each optimizer: unfreeze with ``self.unfreeze_and_add_param_group``). ``configure_optimizers`` should then only
    hand the optimizer trainable parameters (``filter(lambda p: p.requires_grad, self.parameters())``).

    The param groups the callback adds are saved with its state (by parameter name), and put back into the
    optimizers when a run resumes, before the optimizers' own state is loaded into them.
    """

    def __init__(self) -> None:
        # optimizer index -> its param groups, each with "params" as parameter names (what a checkpoint can hold)
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------------------------------------ to override
    def freeze_before_training(self, pl_module: Module) -> None:
        """Freeze what should not train at first (called at setup, before ``configure_optimizers``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement freeze_before_training(pl_module)")

    def finetune_function(self, pl_module: Module, epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze what should train from ``epoch`` on (called at every training epoch start, per optimizer)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement finetune_function(pl_module, epoch, optimizer)"
        )

    # ------------------------------------------------------------------------------------------------ building blocks
    @staticmethod
    def flatten_modules(modules: Modules) -> list[nn.Module]:
        """The leaf modules of ``modules`` (a module or nested iterables of them), plus every module that holds
        parameters of its own besides its children's."""
        if isinstance(modules, nn.ModuleDict):
            modules = modules.values()
        if isinstance(modules, nn.Module):
            candidates: Iterable[nn.Module] = modules.modules()
        else:
            candidates = [m for item in modules for m in BaseFinetuning.flatten_modules(item)]
        return [m for m in candidates if not any(True for _ in m.children()) or m._parameters]

    @staticmethod
    def filter_params(
        modules: Modules, train_bn: bool = True, requires_grad: bool = True
    ) -> Iterator[nn.Parameter]:
        """The parameters of ``modules`` whose ``requires_grad`` is ``requires_grad``; BatchNorm layers' only when
        ``train_bn``."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            for parameter in module.parameters(recurse=False):
                if parameter.requires_grad == requires_grad:
                    yield parameter

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Unfreeze ``modules``: their parameters require gradients, BatchNorm layers track running statistics."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad = True

    @staticmethod
    def freeze_module(module: nn.Module) -> None:
        """Freeze ``module``'s own parameters (and stop a BatchNorm layer's running statistics)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """``params`` less those ``optimizer`` already has (with a warning naming the likely cause)."""
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = list(params)
        kept = [p for p in params if id(p) not in present]
        if len(kept) < len(params):
            rank_zero_warn(
                f"The provided params to be frozen already exist within another group of this optimizer: "
                f"{len(params) - len(kept)} of them are skipped. HINT: Did you init your optimizer in "
                f"`configure_optimizers` with all the parameters? Give it only the trainable ones: "
                f"{type(optimizer).__name__}(filter(lambda p: p.requires_grad, self.parameters()), ...)"
            )
        return kept

    @staticmethod
    def unfreeze_and_add_param_group(
        modules: Modules,
        optimizer: Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as one new param group, with learning rate
        ``lr`` (default: the first group's divided by ``initial_denom_lr``)."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_on_optimizer(
            optimizer, BaseFinetuning.filter_params(modules, train_bn)
        )
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", {})

    def on_load_checkpoint(self, trainer: Trainer, pl_module: Module, checkpoint: dict[str, Any]) -> None:
        # Before the optimizers' state is loaded (it needs the groups this callback added): rebuild them by name.
        state = checkpoint.get("callbacks", {}).get(self.state_key) or {}
        saved = state.get("internal_optimizer_metadata", {})
        if not saved:
            return
        by_name = dict(pl_module.named_parameters())
        for index, optimizer in enumerate(trainer.optimizers):
            groups = saved.get(index)
            if not groups:
                continue
            missing = sorted({n for g in groups for n in g["params"] if n not in by_name})
            if missing:
                raise MisconfigurationError(
                    f"{type(self).__name__}: the checkpoint's optimizer {index} has parameters the model lacks: "
                    f"{missing}. Resume with the model the checkpoint was written from"
                )
            configured = len(optimizer.param_groups)
            optimizer.param_groups = [{**g, "params": [by_name[n] for n in g["params"]]} for g in groups]
            for group in optimizer.param_groups[
                configured:
            ]:  # unfrozen in the first run, at an epoch now past
                for parameter in group["params"]:
                    parameter.requires_grad = True

    # ------------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self.freeze_before_training(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        names = {p: n for n, p in pl_module.named_parameters()}
        for index, optimizer in enumerate(trainer.optimizers):
            before = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            groups = optimizer.param_groups
            recorded = self._internal_optimizer_metadata.get(index)
            if recorded is None:
                recorded = self._internal_optimizer_metadata[index] = []
                new = groups
            else:
                new = groups[before:]
            recorded.extend({**g, "params": [names[p] for p in g["params"]]} for g in new)


class BackboneFinetuning(BaseFinetuning):
    """Train ``pl_module.backbone`` from epoch ``unfreeze_backbone_at_epoch`` on, with its own, rising learning rate
    (Lightning's name).

    The backbone is frozen at setup. At the unfreeze epoch it joins the optimizer as a new param group with learning
    rate ``backbone_initial_lr`` (default: the first group's times ``backbone_initial_ratio_lr``); at every later
    epoch that rate is multiplied by ``lambda_func(epoch + 1)``, and with ``should_align`` it never exceeds the first
    group's. ``verbose`` logs both rates each epoch (rounded to ``rounding`` digits).
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable[[int], float] = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        if isinstance(unfreeze_backbone_at_epoch, bool) or not isinstance(unfreeze_backbone_at_epoch, int):
            raise TypeError(
                f"BackboneFinetuning(unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}): give the epoch as "
                "an int"
            )
        if not callable(lambda_func):
            raise TypeError(
                f"BackboneFinetuning(lambda_func={lambda_func!r}): give a function epoch -> factor, e.g. lambda e: 1.5"
            )
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict.get("previous_backbone_lr")
        super().load_state_dict(state_dict)

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            raise MisconfigurationError(
                f"BackboneFinetuning: The LightningModule should have a nn.Module `backbone` attribute; "
                f"{type(pl_module).__name__}.backbone is {type(getattr(pl_module, 'backbone', None)).__name__}"
            )
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: Module) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Module, epoch: int, optimizer: Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = (
                self.backbone_initial_lr
                if self.backbone_initial_lr is not None
                else current_lr * self.backbone_initial_ratio_lr
            )
            self.unfreeze_and_add_param_group(
                pl_module.backbone, optimizer, backbone_lr, train_bn=self.train_bn,
                initial_denom_lr=self.initial_denom_lr,
            )  # fmt: skip
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        else:
            return
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            log.info(
                f"Current lr: {round(current_lr, self.rounding)}, Backbone lr: {round(backbone_lr, self.rounding)}"
            )


__all__ = ["BackboneFinetuning", "BaseFinetuning"]
