"""The `fleet` command. The only place that wires broker, fleet and bridges together.

Subsystems are imported inside the commands, so `fleet --help` stays fast and each command loads
only what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
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
    logging.getLogger("websockets").setLevel(logging.WARNING)


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


def _load_fleet(path: Path, seed: int | None) -> Any:
    from fleet.schema import load_fleet_config

    try:
        config = load_fleet_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return config if seed is None else config.model_copy(update={"seed": seed})


def _target(config: Any, url: str | None) -> Any:
    from fleet.simulator import make_target

    try:
        return make_target(config, url)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


async def _run_fleet(
    config_path: Path,
    config: Any,
    target: Any,
    *,
    duration: float | None,
    shard: Any,
    workers: int,
    bridges: bool = False,
) -> Any:
    from rich.console import Console

    from broker.config import load_broker_settings
    from broker.server import running
    from fleet.progress import progress
    from fleet.simulator import Live, Target, simulate
    from fleet.transport import Endpoint
    from fleet.workers import simulate_in_workers

    console = Console(stderr=True)
    async with contextlib.AsyncExitStack() as stack:
        if target is None:
            try:
                settings = load_broker_settings(config_path, {})
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            server = await stack.enter_async_context(running(settings))
            for url in server.urls:
                click.echo(f"fleet broker: listening on {url}", err=True)
            target = Target(Endpoint("mqtt", settings.host, server.port))
        click.echo(f"fleet: {config.size:,} devices -> {target.endpoint}", err=True)
        if bridges:
            await _start_bridges(stack, config_path, target)
        live = Live()
        stop = stack.enter_context(_stop_on_signals())
        async with progress(console, lambda: live):
            if workers > 1:
                return await simulate_in_workers(
                    config, target, workers=workers, duration=duration, stop=stop, shard=shard, live=live
                )
            return await simulate(config, target, duration=duration, stop=stop, shard=shard, live=live)


async def _start_bridges(stack: contextlib.AsyncExitStack, config_path: Path, target: Any) -> None:
    """Bridge the fleet's broker with the config's [bridge] settings."""
    from bridges.bridge import running
    from bridges.config import load_bridge_config

    overrides: dict[str, Any] = {"broker": str(target.endpoint)}
    if target.username is not None:
        overrides.update(username=target.username, password=target.password)
    try:
        settings = load_bridge_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    bridge = await stack.enter_async_context(running(settings))
    for url in bridge.urls:
        click.echo(f"fleet bridge: serving {url}", err=True)


def _finish(report: Any, report_path: Path | None) -> None:
    from rich.console import Console

    from fleet.progress import summary_table

    Console().print(summary_table(report))
    if report_path is not None:
        report.write(report_path)
        click.echo(f"fleet: report written to {report_path}", err=True)
    fleet = report.fleet()
    if fleet.connect_failures and not fleet.connects:
        reason = fleet.errors.most_common(1)[0][0] if fleet.errors else "unknown"
        raise click.ClickException(f"no device could connect: {reason}")


def _simulate(config_path: Path, config: Any, target: Any, **options: Any) -> Any:
    from fleet.errors import ConnectRefused, FleetError

    try:
        return asyncio.run(_run_fleet(config_path, config, target, **options))
    except* ConnectRefused as group:
        raise click.ClickException(f"the broker refused the devices: {_first(group)}") from None
    except* FleetError as group:
        raise click.ClickException(str(_first(group))) from None
    except* OSError as group:
        raise click.ClickException(f"cannot listen: {_first(group)}") from None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of a (nested) exception group: task groups nest theirs."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _shard(text: str | None) -> Any:
    from fleet.simulator import Shard

    try:
        return Shard() if text is None else Shard.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None


@cli.command("run")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option(
    "--broker", "broker_url", help="mqtt[s]:// or ws[s]:// URL; default: the config's, else embedded"
)
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="seconds; default: the config's"
)
@click.option("--seed", type=int, help="overrides the config's seed")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="write the JSON report here")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="processes")
@click.option("--shard", help="I/N: run the I-th of N deterministic parts of the fleet")
def run_command(
    config_path: Path,
    broker_url: str | None,
    duration: float | None,
    seed: int | None,
    report_path: Path | None,
    workers: int,
    shard: str | None,
) -> None:
    """Run the fleet of CONFIG until --duration (or the config's duration) passes, or Ctrl-C."""
    config = _load_fleet(config_path, seed)
    report = _simulate(
        config_path,
        config,
        _target(config, broker_url),
        duration=duration or config.duration,
        shard=_shard(shard),
        workers=workers,
    )
    _finish(report, report_path)


@cli.command()
@click.argument("config_paths", metavar="CONFIG...", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(config_paths: tuple[Path, ...]) -> None:
    """Check fleet config files; print each error as 'file: field.path: reason'."""
    from bridges.config import load_bridge_config
    from broker.config import load_broker_settings

    failed = False
    for path in config_paths:
        try:
            config = _load_fleet(path, None)
            if config.broker is None:
                load_broker_settings(path, {})
            if config.bridge:
                load_bridge_config(path, {})
        except click.ClickException as exc:
            click.echo(exc.message, err=True)
            failed = True
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            failed = True
        else:
            click.echo(f"{path}: ok, {config.size:,} devices in {len(config.groups)} groups")
    if failed:
        sys.exit(1)


@cli.group()
def report() -> None:
    """Work with JSON reports of `fleet run`."""


@report.command("merge")
@click.argument("paths", metavar="REPORT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write the merged JSON here")
def report_merge(paths: tuple[Path, ...], output: Path | None) -> None:
    """Merge the reports of several shards into one, and print its summary."""
    from fleet.report import Report, merge_reports

    try:
        merged = merge_reports(Report.load(path) for path in paths)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(merged, output)


@cli.command()
@click.option("--config", type=click.Path(path_type=Path), default=DEMO_CONFIG, show_default=True)
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="seconds; default: until Ctrl-C"
)
def up(config: Path, duration: float | None) -> None:
    """The all-in-one demo: the embedded broker, the demo fleet and the bridges, until Ctrl-C."""
    click.echo(f"fleet up: demo from {config}; press Ctrl-C to stop", err=True)
    fleet_config = _load_fleet(config, None)
    target = _target(fleet_config, None)
    report = _simulate(
        config, fleet_config, target, duration=duration, shard=_shard(None), workers=1, bridges=True
    )
    _finish(report, None)


@cli.command("bridge")
@click.option("--config", type=click.Path(path_type=Path), help="TOML file; its [bridge] table")
@click.option("--broker", help="broker URL to bridge from  [default: mqtt://127.0.0.1:1883]")
@click.option("--host", help="address to listen on  [default: 127.0.0.1]")
@click.option("--http-port", type=int, help="SSE, WebSocket, /metrics; 0 picks a free port  [default: 8080]")
@click.option("--grpc-port", type=int, help="gRPC; 0 picks a free port  [default: 50051]")
def bridge_command(config: Path | None, **options: Any) -> None:
    """Republish MQTT messages to WebSocket, Server-Sent Events and gRPC consumers."""
    from bridges.config import load_bridge_config

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        settings = load_bridge_config(config, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(_run_bridge(settings))
    except* OSError as group:
        raise click.ClickException(f"cannot listen: {_first(group)}") from None


async def _run_bridge(settings: Any) -> None:
    from bridges.bridge import running

    with _stop_on_signals() as stop:
        async with running(settings) as bridge:
            # What exists now (modules, servers) lives as long as the process: keep it out of the
            # collector's full scans, which otherwise show up as latency spikes under load.
            gc.collect()
            gc.freeze()
            click.echo(f"fleet bridge: from {settings.endpoint}")
            for url in bridge.urls:
                click.echo(f"fleet bridge: serving {url}")
            await stop.wait()
            click.echo("fleet bridge: shutting down")


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
