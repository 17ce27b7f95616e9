"""The plugin manager: discovery, each plugin's configuration, and calling hooks.

Plugins are found in two places, loaded in this order:

1. installed distributions with an entry point in the group ``chatproxy`` (as ``llm`` finds its
   plugins), by entry-point name: ``[project.entry-points.chatproxy] example = "pkg.module"``;
2. the ``plugins`` configuration key, in its order: a built-in's short name (``"redact"``,
   ``"webhook"``) or a module path (``"package.module"``).

A plugin module may define ``plugin(config)``: it is called with the plugin's ``[plugin.NAME]``
table and the object it returns is registered instead of the module (``None``: a plugin with
nothing to do under this configuration). A plugin that fails to import or to configure stops
start-up with :class:`PluginLoadError`, a :class:`~chatproxy.errors.SettingsError` naming the
plugin and the error.

Hooks are called by :class:`Plugins`, not by pluggy's hook caller: implementations run in load
order (``tryfirst``/``trylast`` honoured), may be ``async`` (awaited), and a failure is told
apart from a refusal: an :class:`~chatproxy.errors.APIError` propagates as it is, anything else
is logged with the plugin's name, counted in ``chatproxy_plugin_errors`` and raised as
:class:`PluginFailed` (a clean 500 naming the plugin and hook, never the exception's text).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import logging
import re
import types
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from chatproxy.errors import APIError, ChatProxyError, SettingsError
from chatproxy.plugins.hookspecs import PROJECT, HookSpecs

if TYPE_CHECKING:
    from chatproxy.metrics import Metrics
    from chatproxy.settings import Settings

__all__ = [
    "BUILTINS",
    "HOOKS",
    "NO_PLUGINS",
    "PluginFailed",
    "PluginLoadError",
    "Plugins",
    "load_plugins",
]

log = logging.getLogger("chatproxy.plugins")

# The built-in plugins, by the short name the ``plugins`` key gives them.
BUILTINS = {"redact": "chatproxy.plugins.redact", "webhook": "chatproxy.plugins.webhook"}
HOOKS = tuple(
    name for name, value in vars(HookSpecs).items() if callable(value) and not name.startswith("_")
)
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

Call = Callable[..., Any]


class PluginFailed(APIError):
    """A plugin's hook raised something other than an ``APIError``: answered as a 500 that
    names the plugin and the hook, never the exception's text (it may hold a secret)."""

    status = 500
    type = "server_error"
    code = "plugin_error"

    def __init__(self, plugin: str, hook: str) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}")
        self.plugin = plugin
        self.hook = hook


class PluginLoadError(SettingsError):
    """A plugin cannot be imported, configured or registered: start-up stops (exit 2), with
    one line naming the plugin and the error."""

    def __init__(self, plugin: str, problem: str, exc: BaseException | None = None) -> None:
        message = f"plugin {plugin!r} {problem}"
        if exc is not None:
            message += f": {describe(exc)}"
        ChatProxyError.__init__(self, message)
        self.key = "plugins"
        self.expected = "a plugin that loads"
        self.plugin = plugin


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, on one line (for start-up errors, not HTTP clients)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True, frozen=True)
class _Loaded:
    name: str
    obj: object
    origin: str  # for `chatproxy plugins`: "<distribution> <version>", "built-in" or "config"


def _caller(function: Call, argnames: tuple[str, ...], hook_argnames: tuple[str, ...]) -> Call:
    """A callable taking the hook's arguments by name and passing on the ones the
    implementation declares (pluggy matches arguments by name): the function itself when it
    takes them all, else a wrapper that is a coroutine function when the function is one (call
    sites may tell the two apart)."""
    if argnames == hook_argnames:
        return function
    if inspect.iscoroutinefunction(function):

        async def call_async(**kwargs: Any) -> Any:
            return await function(*[kwargs[n] for n in argnames])

        return call_async

    def call(**kwargs: Any) -> Any:
        return function(*[kwargs[n] for n in argnames])

    return call


class Plugins:
    """The loaded plugins and their hook implementations, ready to call.

    Everything is computed at load time: :meth:`implements` is a set lookup, so a call site
    guarded by it costs nothing when no plugin implements the hook.
    """

    def __init__(
        self,
        loaded: list[_Loaded] | None = None,
        impls: Mapping[str, list[tuple[str, Call]]] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        metrics: Metrics | None = None,
        pm: pluggy.PluginManager | None = None,
    ) -> None:
        loaded = loaded or []
        self.names: list[str] = [p.name for p in loaded]
        self.pm = pm  # the pluggy manager the plugins are registered with (introspection)
        self._origins = {p.name: p.origin for p in loaded}
        self._impls: dict[str, list[tuple[str, Call]]] = {
            hook: list(found) for hook, found in (impls or {}).items() if found
        }
        self._implemented = frozenset(self._impls)
        self._hooks: dict[str, list[str]] = {name: [] for name in self.names}
        for hook in sorted(self._impls):
            for name, _ in self._impls[hook]:
                if hook not in self._hooks[name]:
                    self._hooks[name].append(hook)
        self._config = {
            name: types.MappingProxyType(dict((config or {}).get(name, {}))) for name in self.names
        }
        self._metrics = metrics
        self._objects = [(p.name, p.obj) for p in loaded]

    def __repr__(self) -> str:
        return f"Plugins({self.names!r})"

    async def aclose(self) -> None:
        """At shutdown, once no hook is called any more: await each plugin's own ``aclose()``,
        where it has one (to close what it keeps open, such as an HTTP client). A failure is
        recorded as the plugin's, and the others are closed all the same."""
        for name, obj in self._objects:
            close = getattr(obj, "aclose", None)
            if not callable(close):
                continue
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.failed(name, "aclose", exc)

    def hooks(self, name: str) -> list[str]:
        """The hooks plugin ``name`` implements, sorted."""
        return list(self._hooks.get(name, ()))

    def origin(self, name: str) -> str:
        """Where plugin ``name`` came from: its distribution (an entry point), or the
        ``plugins`` key's entry."""
        return self._origins.get(name, "")

    def implements(self, hook: str) -> bool:
        """Whether any loaded plugin implements ``hook``."""
        return hook in self._implemented

    def implementations(self, hook: str) -> list[tuple[str, Call]]:
        """``(plugin name, callable)`` for each implementation of ``hook``, in call order; the
        callable takes the hook's arguments by name (``fn(call=call)``)."""
        return list(self._impls.get(hook, ()))

    def config(self, name: str) -> Mapping[str, Any]:
        """Plugin ``name``'s ``[plugin.NAME]`` table (empty if it has none)."""
        return self._config.get(name, types.MappingProxyType({}))

    def failed(self, plugin: str, hook: str, exc: BaseException) -> None:
        """Record a plugin's failure: logged with its name and traceback, and counted."""
        log.error(
            "plugin %r failed in %s: %s",
            plugin,
            hook,
            type(exc).__name__,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if self._metrics is not None:
            self._metrics.plugin_errors.labels(plugin, hook).inc()

    def _fail(self, plugin: str, hook: str, exc: BaseException) -> PluginFailed:
        self.failed(plugin, hook, exc)
        return PluginFailed(plugin, hook)

    async def _answers(self, hook: str, kwargs: dict[str, Any]) -> AsyncIterator[tuple[str, Any]]:
        """Each implementation of ``hook`` called in order (the async ones awaited), with its
        answer; the errors handled as :meth:`run` says."""
        for name, call in self._impls.get(hook, ()):
            try:
                answer = call(**kwargs)
                if inspect.isawaitable(answer):
                    answer = await answer
            except APIError:
                raise
            except Exception as exc:
                raise self._fail(name, hook, exc) from exc
            yield name, answer

    async def run(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``hook`` in order (awaiting the async ones): their
        answers that are not ``None``. An ``APIError`` (a refusal) propagates as it is; any
        other exception is recorded (:meth:`failed`) and raised as :class:`PluginFailed`."""
        return [answer async for _, answer in self._answers(hook, kwargs) if answer is not None]

    def run_sync(self, hook: str, **kwargs: Any) -> list[Any]:
        """:meth:`run` for hooks called where nothing can be awaited (an ``async``
        implementation of such a hook is the plugin's failure)."""
        answers = []
        for name, call in self._impls.get(hook, ()):
            try:
                answer = call(**kwargs)
                if inspect.isawaitable(answer):
                    _discard(answer)
                    raise TypeError(f"{hook} must not be async")
            except APIError:
                raise
            except Exception as exc:
                raise self._fail(name, hook, exc) from exc
            if answer is not None:
                answers.append(answer)
        return answers

    async def first_answer(self, hook: str, **kwargs: Any) -> tuple[str, Any] | None:
        """The first answer of ``hook`` that is not ``None``, with the plugin that gave it;
        the implementations after it are not called."""
        async with contextlib.aclosing(self._answers(hook, kwargs)) as answers:
            async for name, answer in answers:
                if answer is not None:
                    return name, answer
        return None

    async def first(self, hook: str, **kwargs: Any) -> Any:
        """The first answer of ``hook`` that is not ``None`` (``identify``), or ``None``."""
        found = await self.first_answer(hook, **kwargs)
        return None if found is None else found[1]


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)  # a coroutine never awaited would warn
    if close is not None:
        close()


NO_PLUGINS = Plugins()


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    return pm


def _configure(name: str, module: object, config: Mapping[str, Any]) -> object:
    """The object to register for a loaded module: what its ``plugin(config)`` returns, or the
    module itself."""
    factory = getattr(module, "plugin", None)
    if not (inspect.ismodule(module) and callable(factory)):
        return module
    try:
        obj = factory(types.MappingProxyType(dict(config)))
    except SettingsError:
        raise  # the plugin names its own key: plugin.NAME.KEY
    except Exception as exc:
        raise PluginLoadError(name, "cannot be configured", exc) from None
    return types.SimpleNamespace() if obj is None else obj


def _register(pm: pluggy.PluginManager, name: str, obj: object) -> None:
    try:
        pm.register(obj, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(name, "cannot be registered", exc) from None
    _check(pm, name, obj)


def _check(pm: pluggy.PluginManager, name: str, obj: object) -> None:
    """What pluggy lets through but chatproxy refuses: hooks it does not have (a misspelt
    name would never be called), and hook wrappers (hooks are not called through pluggy)."""
    callers = pm.get_hookcallers(obj) or []
    unknown = sorted(caller.name for caller in callers if not caller.has_spec())
    if unknown:
        hooks = ", ".join(unknown)
        raise PluginLoadError(name, f"implements unknown hooks ({hooks}; see docs/plugins.md)")
    for caller in callers:
        for impl in caller.get_hookimpls():
            if impl.plugin is obj and (impl.hookwrapper or impl.wrapper):
                raise PluginLoadError(name, f"wraps {caller.name}: hook wrappers are not supported")


def _entry_point_plugins(
    pm: pluggy.PluginManager, settings: Settings, loaded: list[_Loaded], modules: set[int]
) -> None:
    # One entry point at a time, so that a failure names its plugin.
    names = sorted({ep.name for ep in importlib.metadata.entry_points(group=PROJECT)})
    for name in names:
        try:
            if not pm.load_setuptools_entrypoints(PROJECT, name=name):
                continue  # already registered
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(name, "cannot be registered", exc) from None
        except Exception as exc:  # its import failed: whatever it raised
            raise PluginLoadError(name, "cannot be loaded", exc) from None
        module = pm.get_plugin(name)
        dist = next((d for p, d in pm.list_plugin_distinfo() if p is module), None)
        origin = f"{dist.project_name} {dist.version}" if dist is not None else "entry point"
        modules.add(id(module))
        obj = _configure(name, module, settings.plugin.get(name, {}))
        if obj is module:
            _check(pm, name, module)
        else:
            pm.unregister(name=name)
            _register(pm, name, obj)
        loaded.append(_Loaded(name, obj, origin))


def _configured_plugins(
    pm: pluggy.PluginManager, settings: Settings, loaded: list[_Loaded], modules: set[int]
) -> None:
    for name in settings.plugins:
        if pm.has_plugin(name):
            continue  # installed with an entry point of that name, or listed twice
        path = BUILTINS.get(name, name)
        if not MODULE_RE.fullmatch(path):  # settings refuse these already
            raise PluginLoadError(name, "is not a built-in plugin's name nor a module path")
        try:
            module = importlib.import_module(path)
        except Exception as exc:
            raise PluginLoadError(name, "cannot be loaded", exc) from None
        if id(module) in modules:
            continue  # the same module under another name
        modules.add(id(module))
        obj = _configure(name, module, settings.plugin.get(name, {}))
        _register(pm, name, obj)
        origin = "built-in" if name in BUILTINS else "config"
        loaded.append(_Loaded(name, obj, origin))


def _order(pm: pluggy.PluginManager, loaded: list[_Loaded]) -> dict[str, list[tuple[str, Call]]]:
    """Each hook's implementations in call order: load order, ``tryfirst`` ones first and
    ``trylast`` ones last."""
    rank = {id(p.obj): (i, p.name) for i, p in enumerate(loaded)}
    impls: dict[str, list[tuple[str, Call]]] = {}
    for hook in HOOKS:
        found = []
        caller = getattr(pm.hook, hook)
        hook_argnames = caller.spec.argnames if caller.spec is not None else ()
        for impl in caller.get_hookimpls():
            if id(impl.plugin) not in rank:
                continue
            index, name = rank[id(impl.plugin)]
            group = 0 if impl.tryfirst else 2 if impl.trylast else 1
            call = _caller(impl.function, tuple(impl.argnames), tuple(hook_argnames))
            found.append(((group, index), name, call))
        found.sort(key=lambda item: item[0])
        impls[hook] = [(name, call) for _, name, call in found]
    return impls


def load_plugins(settings: Settings, metrics: Metrics | None = None) -> Plugins:
    """Find, import and configure the plugins (entry points, then the ``plugins`` key).
    Raises :class:`PluginLoadError` (or the ``SettingsError`` a plugin raised about its own
    table) when one cannot be loaded, and ``SettingsError`` for a ``[plugin.NAME]`` table
    naming no loaded plugin."""
    pm = _manager()
    loaded: list[_Loaded] = []
    modules: set[int] = set()
    _entry_point_plugins(pm, settings, loaded, modules)
    _configured_plugins(pm, settings, loaded, modules)
    names = [p.name for p in loaded]
    for name in settings.plugin:
        if name not in names:
            shown = ", ".join(names) if names else "none is loaded"
            raise SettingsError(f"plugin.{name}", f"the name of a loaded plugin ({shown})", None)
    return Plugins(loaded, _order(pm, loaded), settings.plugin, metrics, pm)
