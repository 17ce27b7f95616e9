"""chatproxy: durable chat history for any OpenAI-compatible endpoint.

Plugins mark their hook functions with :data:`hookimpl` (``from chatproxy import hookimpl``);
``docs/plugins.md`` describes the hooks.
"""

from chatproxy.plugins.hookspecs import hookimpl

__all__ = ["hookimpl"]
