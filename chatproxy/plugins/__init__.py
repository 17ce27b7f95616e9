"""Plugins: pluggy hooks, discovered through the ``chatproxy`` entry-point group and the
``plugins`` configuration key (``docs/plugins.md`` is the reference)."""

from chatproxy.plugins.hookspecs import (
    EVENT_TYPES,
    Event,
    Exporter,
    Identity,
    StoreRecord,
    UpstreamCall,
    hookimpl,
)
from chatproxy.plugins.manager import (
    NO_PLUGINS,
    PluginFailed,
    PluginLoadError,
    Plugins,
    load_plugins,
)

__all__ = [
    "EVENT_TYPES",
    "NO_PLUGINS",
    "Event",
    "Exporter",
    "Identity",
    "PluginFailed",
    "PluginLoadError",
    "Plugins",
    "StoreRecord",
    "UpstreamCall",
    "hookimpl",
    "load_plugins",
]
