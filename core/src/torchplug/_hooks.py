import pluggy

#: Decorate a backend's methods with this to implement a hook from :mod:`torchplug.hookspecs`.
hookimpl = pluggy.HookimplMarker("torchplug")
