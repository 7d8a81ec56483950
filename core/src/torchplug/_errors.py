"""Errors meant for people: what was asked, what exists, what to do."""


class MisconfigurationError(ValueError):
    """A Trainer argument, or a combination of them, that cannot run. The message names the argument."""


class PluginLoadError(ImportError):
    """A backend chosen by name could not be imported; the message names it and its distribution."""


class ProcessFailedError(RuntimeError):
    """A process of a multi-process job failed; the message names its rank."""


class PluginError(TypeError):
    """A plugin breaks torchplug's hook contract; the message names the plugin, its distribution and the mistake."""


class ArgumentTypeError(MisconfigurationError, TypeError):
    """An argument of the wrong type. Also a ``TypeError``, which is what Lightning raises for it."""


class ConflictError(MisconfigurationError, RuntimeError):
    """Parts of a configuration that cannot go together. Also a ``RuntimeError``, which is what Lightning raises."""
class SIGTERMException(SystemExit):
    """Raised at a step boundary when the run stops on SIGTERM (or the job's requeue signal), after the step.

    What ``on_exception`` receives (Ctrl-C gives a ``KeyboardInterrupt`` there, as in Lightning). ``signum`` is the
    signal; the exit status is ``128 + signum``.
    """

    def __init__(self, signum: int = 15) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class CheckpointWriteError(OSError):
    """A checkpoint could not be written: the message names the file and the cause (``errno`` is the cause's)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointNotFoundError(MisconfigurationError, FileNotFoundError):
    """``ckpt_path`` names no file: a ``MisconfigurationError`` that is also a ``FileNotFoundError`` (as Lightning)."""


class PossibleUserWarning(UserWarning):
    """A warning about something that is often, not always, a mistake (a validation step without validation data,
    modules left in eval mode, ...); silence them all with :func:`torchplug.utilities.disable_possible_user_warnings`
    once they are known to be intended."""
