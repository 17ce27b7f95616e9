"""An example chatproxy plugin, installed as a package with an entry point.

- ``chatproxy example-policy``: a command that prints the plugin's policy (``--json`` too).
- ``GET /v1/example/whoami``: a route, behind the proxy's authentication and limits, that says
  who the caller is and which models are refused.
- ``before_upstream``: refuses a request for a model of ``deny_models`` with an OpenAI-shaped
  ``400`` (code ``model_not_allowed``) before anything is stored.

Configuration (``[plugin.example]``, or ``CHATPROXY_PLUGIN__EXAMPLE__DENY_MODELS='["gpt-4"]'``)::

    [plugin.example]
    deny_models = ["gpt-4", "o1"]   # refused models; empty (the default): no rule at all

With no ``deny_models`` the plugin implements no ``before_upstream``: a plugin adds nothing to
a request it has nothing to say about.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click
from aiohttp import web

from chatproxy import hookimpl
from chatproxy.errors import InvalidRequest, SettingsError
from chatproxy.plugins import UpstreamCall

__all__ = ["plugin"]


class Example:
    """The plugin's hooks, for one configuration."""

    def __init__(self, deny_models: frozenset[str]) -> None:
        self.deny_models = deny_models

    def policy(self) -> dict[str, Any]:
        return {"deny_models": sorted(self.deny_models)}

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command("example-policy")
        @click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
        def example_policy(as_json: bool) -> None:
            """The example plugin's policy: the models it refuses."""
            policy = self.policy()
            if as_json:
                click.echo(json.dumps(policy))
            elif policy["deny_models"]:
                click.echo("refused models: " + ", ".join(policy["deny_models"]))
            else:
                click.echo("refused models: none")

    @hookimpl
    def register_routes(self, router: web.UrlDispatcher) -> None:
        from chatproxy.appkeys import CALLER  # the server's modules: imported by the server only

        async def whoami(request: web.Request) -> web.Response:
            caller = request[CALLER]  # set by the proxy's authentication, before this runs
            return web.json_response({"user": caller.user_id, "tier": caller.tier, **self.policy()})

        router.add_get("/v1/example/whoami", whoami)


class ExampleWithRule(Example):
    """The same, with the rule: only when some model is refused."""

    @hookimpl
    def before_upstream(self, call: UpstreamCall) -> None:
        if call.model in self.deny_models:
            raise InvalidRequest(
                f"the model {call.model!r} is not allowed on this proxy",
                code="model_not_allowed",
                param="model",
            )


def plugin(config: Mapping[str, Any]) -> Example:
    """The plugin for its ``[plugin.example]`` table (chatproxy calls this at start-up)."""
    unknown = sorted(set(config) - {"deny_models"})
    if unknown:
        raise SettingsError(f"plugin.example.{unknown[0]}", "a known key (deny_models)", None)
    deny = config.get("deny_models", [])
    if not isinstance(deny, list) or not all(isinstance(m, str) for m in deny):
        raise SettingsError("plugin.example.deny_models", "a list of model names", deny)
    return ExampleWithRule(frozenset(deny)) if deny else Example(frozenset())
