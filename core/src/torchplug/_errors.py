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
