"""The `fleet` command. The only place that wires broker, fleet and bridges together.

Subsystems are imported inside the commands, so `fleet --help` stays fast and each command loads
only what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from fleet.errors import ConfigError

__all__ = ["main"]

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, installed before anything is announced."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mqtt-fleet")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def cli(log_level: str) -> None:
    """mqtt-fleet: simulate, watch and stress-test fleets of MQTT devices."""
    _setup_logging(log_level)


def _broker_options(func: Any) -> Any:
    options = [
        click.option("--config", type=click.Path(path_type=Path), help="TOML file; its [broker] table"),
        click.option("--host", help="address to listen on  [default: 127.0.0.1]"),
        click.option("--port", type=int, help="MQTT/TCP port, 0 picks a free one  [default: 1883]"),
        click.option("--ws-port", type=int, help="MQTT/WebSocket port, 0 turns it off  [default: 8083]"),
        click.option("--tls-port", type=int, help="MQTT/TLS port, with --tls-cert  [default: 8883]"),
        click.option("--tls-cert", type=click.Path(path_type=Path), help="PEM certificate (chain)"),
        click.option("--tls-key", type=click.Path(path_type=Path), help="PEM private key"),
        click.option("--password-file", type=click.Path(path_type=Path), help="made by `fleet passwd`"),
        click.option("--acl-file", type=click.Path(path_type=Path), help="Mosquitto-style ACL file"),
        click.option(
            "--allow-anonymous/--no-allow-anonymous",
            default=None,
            help="default: allowed without a password file, refused with one",
        ),
        click.option("--max-queued", type=int, help="messages queued per session  [default: 1000]"),
        click.option("--max-inflight", type=int, help="unacked QoS 1/2 per session  [default: 20]"),
        click.option("--max-packet-size", type=int, help="bytes  [default: 1048576]"),
        click.option("--sys-interval", type=float, help="seconds between $SYS updates, 0: off [default: 10]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@_broker_options
def broker(config: Path | None, **options: Any) -> None:
    """Run the embedded MQTT 3.1.1 broker until SIGINT or SIGTERM."""
    from broker.config import load_broker_settings

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        settings = load_broker_settings(config, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    asyncio.run(_run_broker(settings))


async def _run_broker(settings: Any) -> None:
    from broker.server import running

    try:
        with _stop_on_signals() as stop:
            async with running(settings) as server:
                for url in server.urls:
                    click.echo(f"fleet broker: listening on {url}")
                await stop.wait()
                click.echo("fleet broker: shutting down")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc}") from None


@cli.command()
@click.option("--config", type=click.Path(path_type=Path), default=DEMO_CONFIG, show_default=True)
def up(config: Path) -> None:
    """Run the all-in-one demo: the embedded broker (the fleet and bridges join as they land)."""
    from broker.config import load_broker_settings

    try:
        settings = load_broker_settings(config, {})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"fleet up: demo from {config}; press Ctrl-C to stop")
    asyncio.run(_run_broker(settings))


@cli.command()
@click.argument("password_file", type=click.Path(path_type=Path))
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def passwd(password_file: Path, username: str, password_stdin: bool) -> None:
    """Add or replace USERNAME in PASSWORD_FILE (PBKDF2-SHA512, Mosquitto's format)."""
    from broker.auth import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise click.ClickException("the passwords differ")
    if not password:
        raise click.ClickException("the password is empty")
    try:
        set_password(password_file, username, password)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"fleet passwd: {username} set in {password_file}")


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        cli()
