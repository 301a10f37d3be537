"""The Flower ClientApp: thin wiring from messages to :func:`client.train.run_site_round`.

Which site a node is: its node config ``site-config`` (a deployment: the path of the site's own YAML file), or in a
simulation the run config's ``sites-dir`` and comma-separated ``sites``, indexed by the node's ``partition-id``
(``<sites-dir>/<site>/site.yaml``). ``make_client_app(defaults)`` fills run-config keys for in-process simulation,
where Flower passes no run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client.config import SiteConfig, load_site_config
from client.protocol import ARRAYS, CONFIG, TrainInstructions, record_to_state, roll_call_reply, train_reply
from client.train import run_site_round

Scalar = str | int | float | bool


def site_config_path(context: Context, defaults: Mapping[str, Scalar]) -> Path:
    """The site file for this node (see the module docstring)."""
    if "site-config" in context.node_config:
        return Path(str(context.node_config["site-config"]))
    run_config = {**defaults, **context.run_config}
    sites = [s for s in str(run_config["sites"]).split(",") if s]
    partition = int(context.node_config["partition-id"])
    if not 0 <= partition < len(sites):
        raise ValueError(f"partition-id {partition} has no site in sites={sites}")
    return Path(str(run_config["sites-dir"])) / sites[partition] / "site.yaml"


def handle_train(msg: Message, site: SiteConfig) -> Message:
    """Train on the received state (decoded to float32) for the instructed round; reply with the update in the
    instructed transport dtype and aggregate metrics."""
    config = msg.content[CONFIG]
    assert isinstance(config, ConfigRecord)
    instructions = TrainInstructions.from_record(config)
    state = record_to_state(msg.content.array_records[ARRAYS], instructions.transport)
    result = run_site_round(site, instructions, state)
    content = train_reply(
        site=site.name,
        state=result.state,
        metrics=result.metrics,
        reason=result.reason,
        transport=instructions.transport,
    )
    return Message(content, reply_to=msg)


def make_client_app(defaults: Mapping[str, Scalar] | None = None) -> ClientApp:
    """A ClientApp; ``defaults`` supply run-config keys that the run config does not set."""
    fallback = dict(defaults or {})
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, load_site_config(site_config_path(context, fallback)))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        site = load_site_config(site_config_path(context, fallback))
        return Message(roll_call_reply(site.name), reply_to=msg)

    return app


app = make_client_app()
