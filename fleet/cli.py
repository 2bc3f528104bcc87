"""The `fleet` command. The only place that wires broker, fleet and bridges together.

Subsystems are imported inside the commands, so `fleet --help` stays fast and each command loads
only what it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import getpass
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from fleet.credentials import Credentials
from fleet.errors import ConfigError, StoreError
from fleet.signals import SIGNALS, signal_name

__all__ = ["cli"]

_T = TypeVar("_T")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request, on `fleet tail`'s stderr


@contextlib.contextmanager
def _reload_on_sighup(reload: Callable[[], None]) -> Iterator[None]:
    """Call `reload` in the running loop on each SIGHUP while the block runs (logrotate and
    `systemctl reload` send it); outside the block the command ignores SIGHUP instead of dying of it.

    A plain handler that hands over with the thread-safe call, which also wakes the loop: it leaves
    the signal wakeup fd to fleet/signals.py, which handles SIGINT and SIGTERM."""
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGHUP, lambda signum, frame: loop.call_soon_threadsafe(reload))
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


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
        click.option(
            "--cafile", type=click.Path(path_type=Path), help="CA that client certificates must chain to"
        ),
        click.option(
            "--require-certificate",
            is_flag=True,
            default=None,
            help="TLS clients must present a certificate signed by --cafile",
        ),
        click.option(
            "--use-identity-as-username",
            is_flag=True,
            default=None,
            help="a TLS client's user name (for ACLs, %u) is its certificate's CN",
        ),
        click.option("--password-file", type=click.Path(path_type=Path), help="made by `fleet passwd`"),
        click.option("--acl-file", type=click.Path(path_type=Path), help="Mosquitto-style ACL file"),
        click.option(
            "--allow-anonymous/--no-allow-anonymous",
            default=None,
            help="default: allowed on loopback without a password file, refused with one; "
            "off loopback without a password file, --allow-anonymous must be given",
        ),
        click.option("--max-queued", type=int, help="messages queued per session  [default: 1000]"),
        click.option("--max-inflight", type=int, help="unacked QoS 1/2 per session  [default: 20]"),
        click.option("--max-packet-size", type=int, help="bytes  [default: 1048576]"),
        click.option(
            "--max-keepalive", type=int, help="seconds, sent as MQTT 5 Server Keep Alive  [default: 65535]"
        ),
        click.option("--max-topic-alias", type=int, help="MQTT 5 topic aliases per client  [default: 10]"),
        click.option("--sys-interval", type=float, help="seconds between $SYS updates, 0: off [default: 10]"),
        click.option(
            "--persistence",
            type=click.Path(path_type=Path, file_okay=False),
            help="folder of the persistent store (sessions, queued and retained messages)  [default: off]",
        ),
        click.option(
            "--sync",
            type=click.Choice(["always", "interval", "never"]),
            help="with --persistence: durable before each ack, every --sync-interval, or at shutdown  "
            "[default: always]",
        ),
        click.option("--sync-interval", type=int, help="milliseconds, with --sync interval  [default: 1000]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _split_url(url: str, hint: str) -> tuple[str, Credentials]:
    """`url` without `user:password@`, and those credentials; a bad one is an error not showing them."""
    from fleet.credentials import split_url

    try:
        return split_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


_CLIENT_OPTIONS = ("username", "password", "password_file", "cafile", "cert", "key", "insecure")


def _client_options(func: Callable[..., _T]) -> Callable[..., _T]:
    """The options of a broker's client, named as mosquitto_sub names them; the command gets them
    as one `credentials` value (fleet.credentials.Credentials)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> _T:
        values = {name: kwargs.pop(name) for name in _CLIENT_OPTIONS}
        context = click.get_current_context()
        if values["username"] is None and (
            context.get_parameter_source("password") == click.core.ParameterSource.ENVIRONMENT
        ):
            values["password"] = None  # FLEET_PASSWORD is for clients that give a user name
        try:
            kwargs["credentials"] = Credentials(**values)
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            raise click.BadParameter(reason, param_hint=f"--{field.replace('_', '-')}") from None
        return func(*args, **kwargs)

    file = click.Path(dir_okay=False, path_type=Path)
    options = [
        click.option("-u", "--username", help="user name for the broker"),
        click.option(
            "-P",
            "--password",
            envvar="FLEET_PASSWORD",
            show_envvar=True,
            help="password (with -u); FLEET_PASSWORD or --password-file keep it out of the shell history",
        ),
        click.option("--password-file", type=file, help="a file whose first line is the password (with -u)"),
        click.option("--cafile", type=file, help="CA certificates (PEM) to verify the broker with"),
        click.option("--cert", type=file, help="client certificate (PEM), with --key"),
        click.option("--key", type=file, help="the client certificate's private key (PEM)"),
        click.option("--insecure", is_flag=True, help="do not verify the broker's certificate and host name"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _metrics_options(hold: bool) -> Callable[[Any], Any]:
    """--metrics-port and --metrics-host (fleet.metrics, broker.metrics); with `hold`, --metrics-hold."""

    def decorate(func: Any) -> Any:
        if hold:
            func = click.option(
                "--metrics-hold",
                type=click.FloatRange(min=0),
                default=0,
                help="seconds to keep serving the final metrics after the run, or until SIGTERM",
            )(func)
        func = click.option(
            "--metrics-host", default="127.0.0.1", show_default=True, help="address of /metrics"
        )(func)
        return click.option(
            "--metrics-port", type=click.IntRange(0, 65535), help="serve Prometheus /metrics; 0 picks a port"
        )(func)

    return decorate


@contextlib.contextmanager
def _fleet_metrics(port: int | None, host: str, shard: Any, who: str) -> Iterator[Any]:
    """The /metrics endpoint of a fleet process (None without --metrics-port); prints its URL."""
    if port is None:
        yield None
        return
    from fleet.metrics import FleetMetrics

    try:
        metrics = FleetMetrics(f"{shard.number}/{shard.count}", host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc}") from None
    with metrics:
        click.echo(f"{who}: metrics on {metrics.url}", err=True)
        yield metrics


def _timeline(html_path: Path | None) -> Any:
    """The live totals over time, for --html."""
    if html_path is None:
        return None
    from fleet.html_report import Timeline

    return Timeline()


def _write_html(path: Path, title: str, report: Any, who: str = "fleet", **details: Any) -> None:
    from fleet.html_report import render, write_html

    if details.get("timeline") is not None:
        details["timeline"] = details["timeline"].points
    write_html(path, render(title, report, **details))
    click.echo(f"{who}: HTML report written to {path}", err=True)


def _hold_metrics(metrics: Any, seconds: float) -> None:
    """Keep serving the final metrics `seconds` long, or until SIGINT or SIGTERM."""
    if metrics is None or not seconds:
        return

    async def hold(stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    SIGNALS.run(hold)


@cli.command()
@_broker_options
@_metrics_options(hold=False)
def broker(config: Path | None, metrics_port: int | None, metrics_host: str, **options: Any) -> None:
    """Run the embedded MQTT 3.1.1 and 5 broker until SIGINT or SIGTERM; SIGHUP reloads the password
    and ACL files."""
    from broker.config import load_broker_settings

    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        settings = load_broker_settings(config, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    SIGNALS.run(lambda stop: _run_broker(settings, stop, metrics_port, metrics_host))


async def _run_broker(
    settings: Any, stop: asyncio.Event, metrics_port: int | None = None, metrics_host: str = ""
) -> None:
    from broker import metrics
    from broker.server import running

    try:
        async with running(settings) as server, contextlib.AsyncExitStack() as stack:
            stack.enter_context(_reload_on_sighup(server.reload))
            for url in server.urls:
                click.echo(f"fleet broker: listening on {url}")
            if metrics_port is not None:
                endpoint = await stack.enter_async_context(
                    metrics.serving(server, metrics_host, metrics_port)
                )
                click.echo(f"fleet broker: metrics on {endpoint.url}")
            await stop.wait()
            click.echo("fleet broker: shutting down")
    except* (ConfigError, StoreError) as group:  # a store that fails to write stops the broker's tasks
        raise click.ClickException(str(_first(group))) from None
    except* OSError as group:
        raise click.ClickException(f"cannot listen: {_first(group)}") from None


def _load_fleet(path: Path, seed: int | None) -> Any:
    from fleet.schema import load_fleet_config

    try:
        config = load_fleet_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return config if seed is None else config.model_copy(update={"seed": seed})


def _target(config: Any, url: str | None, credentials: Credentials | None = None) -> Any:
    from fleet.simulator import make_target

    try:
        return make_target(config, url, credentials)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


async def _run_fleet(
    config_path: Path,
    config: Any,
    target: Any,
    *,
    stop: asyncio.Event,
    duration: float | None,
    shard: Any,
    workers: int,
    bridges: bool = False,
    watch: bool = False,
    broker_overrides: dict[str, Any] | None = None,
    bridge_overrides: dict[str, Any] | None = None,
    followers: tuple[Any, ...] = (),
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
                settings = load_broker_settings(config_path, broker_overrides or {})
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            server = await stack.enter_async_context(running(settings))
            for url in server.urls:
                click.echo(f"fleet broker: listening on {url}", err=True)
            target = Target(Endpoint("mqtt", settings.host, server.port))
        click.echo(f"fleet: {config.size:,} devices -> {target.endpoint}", err=True)
        if bridges:
            dashboard = await _start_bridges(stack, config_path, target, bridge_overrides or {})
            click.echo(f"fleet up: the dashboard is at {dashboard}", err=True)
            if not watch:
                click.echo(
                    f"fleet up: no terminal, so no TUI; `fleet watch --broker {target.endpoint}` "
                    "shows the fleet live in one",
                    err=True,
                )
        live = Live()
        for follower in followers:  # the metrics endpoint, the HTML report's timeline
            await stack.enter_async_context(follower.following(live))
        if watch:
            return await _simulate_watched(
                config, target, duration=duration, stop=stop, shard=shard, live=live
            )
        async with progress(console, lambda: live):
            if workers > 1:
                return await simulate_in_workers(
                    config, target, workers=workers, duration=duration, stop=stop, shard=shard, live=live
                )
            return await simulate(config, target, duration=duration, stop=stop, shard=shard, live=live)


async def _simulate_watched(
    config: Any, target: Any, *, duration: float | None, stop: asyncio.Event, shard: Any, live: Any
) -> Any:
    """The fleet runs while `fleet watch`, attached to its broker, fills the terminal; quitting the
    TUI stops the fleet, and the end of the fleet closes the TUI."""
    from fleet.simulator import simulate
    from fleet.watch.app import WatchApp
    from fleet.watch.sources import MqttSource

    login = target.login()
    source = MqttSource(target.endpoint, username=login.username, password=login.password, ssl=login.ssl)
    async with asyncio.TaskGroup() as tg:
        fleet = tg.create_task(
            simulate(config, target, duration=duration, stop=stop, shard=shard, live=live),
            name="fleet.simulator",
        )
        app = WatchApp(source, until=fleet)
        with app.logs_in_event_log():
            await app.run_async()
        stop.set()
    return fleet.result()


async def _start_bridges(
    stack: contextlib.AsyncExitStack, config_path: Path, target: Any, options: dict[str, Any]
) -> str:
    """Bridge the fleet's broker with the config's [bridge] settings and `options` over them; return
    the dashboard's URL."""
    from bridges.bridge import running
    from bridges.config import load_bridge_config

    overrides: dict[str, Any] = {**options, "broker": str(target.endpoint)}
    login = target.login()
    if login.username is not None:
        password = login.password
        overrides.update(username=login.username, password=None if password is None else password.decode())
    try:
        settings = load_bridge_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    bridge = await stack.enter_async_context(running(settings))
    for url in bridge.urls:
        click.echo(f"fleet bridge: serving {url}", err=True)
    return bridge.dashboard_url


_UNBOUNDED = 10_000  # columns: a width no table of ours reaches


def _print_table(table: Any) -> None:
    """Print a table on stdout. Without a terminal and without COLUMNS, rich would assume 80 columns
    and wrap the cells; a log or a pipe gets every row on one line instead."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        needed = console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum
        console.width = max(console.width, needed)
    console.print(table)


def _finish(report: Any, report_path: Path | None, title: str) -> None:
    from fleet.progress import summary_table

    _print_table(summary_table(report, title))
    if report_path is not None:
        report.write(report_path)
        click.echo(f"fleet: report written to {report_path}", err=True)
    fleet = report.fleet()
    if fleet.connect_failures and not fleet.connects:
        reason = fleet.errors.most_common(1)[0][0] if fleet.errors else "unknown"
        raise click.ClickException(f"no device could connect: {reason}")
    if report.meta.get("complete") is False and "merged" not in report.meta:
        marked = "; the report says complete: false" if report_path is not None else ""
        _cut_short("fleet", f"after {report.meta['duration_s']:.1f} s{marked}")


def _cut_short(command: str, detail: str) -> NoReturn:
    """An interrupted run never reports success: say so, and exit 128 + the signal (130 for SIGINT)."""
    signum = SIGNALS.stopped_by or signal.SIGINT
    click.echo(f"{command}: the run was cut short by {signal_name(signum)} {detail}", err=True)
    sys.exit(128 + signum)


def _simulate(config_path: Path, config: Any, target: Any, **options: Any) -> Any:
    from fleet.errors import ConnectRefused, FleetError

    try:
        return SIGNALS.run(lambda stop: _run_fleet(config_path, config, target, stop=stop, **options))
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


def _shard(text: str | None, shards: int | None = None) -> Any:
    from fleet.simulator import Shard

    if text == "auto":
        return _auto_shard(shards)
    if shards is not None:
        raise click.BadParameter("only with --shard auto", param_hint="--shards")
    try:
        return Shard() if text is None else Shard.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None


def _auto_shard(shards: int | None) -> Any:
    """`--shard auto`: the shard from a Kubernetes Indexed Job's JOB_COMPLETION_INDEX."""
    from fleet.simulator import Shard

    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is None:
        raise click.ClickException(
            "--shard auto: JOB_COMPLETION_INDEX is not set (an Indexed Job sets it in each pod)"
        )
    count = str(shards) if shards is not None else os.environ.get("FLEET_SHARDS")
    if count is None:
        raise click.ClickException("--shard auto: give the number of shards with --shards N or FLEET_SHARDS")
    try:
        return Shard.from_index(index.strip(), count.strip())
    except ValueError as exc:
        raise click.ClickException(f"--shard auto: {exc}") from None


# -V as mosquitto_sub names the versions; the value is the protocol level (4 or 5).
_VERSIONS = {"mqttv5": 5, "mqttv311": 4}


def _protocol_option(help: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    return click.option(
        "-V",
        "--protocol-version",
        "protocol_version",
        type=click.Choice(sorted(_VERSIONS)),
        callback=lambda ctx, param, value: None if value is None else _VERSIONS[value],
        help=help,
    )


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
@click.option(
    "--shard",
    help="I/N: run the I-th of N deterministic parts of the fleet; auto: I from JOB_COMPLETION_INDEX + 1",
)
@click.option("--shards", type=click.IntRange(min=1), help="N for --shard auto  [default: $FLEET_SHARDS]")
@_protocol_option("every group speaks this MQTT version  [default: each group's protocol]")
@_client_options
@_metrics_options(hold=True)
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="write an HTML report with charts")
def run_command(
    config_path: Path,
    broker_url: str | None,
    duration: float | None,
    seed: int | None,
    report_path: Path | None,
    workers: int,
    shard: str | None,
    protocol_version: int | None,
    credentials: Credentials,
    shards: int | None,
    metrics_port: int | None,
    metrics_host: str,
    metrics_hold: float,
    html_path: Path | None,
) -> None:
    """Run the fleet of CONFIG until --duration (or the config's duration) passes, or Ctrl-C.

    -u, -P, --cafile, --cert and --key (with --broker, or the config's [broker] url) are the
    devices' credentials, and win over the config's. -V mqttv5 makes every group an MQTT 5 group;
    -V mqttv311 every group a 3.1.1 group (an error for a group with MQTT 5 options).
    """
    config = _load_fleet(config_path, seed)
    if protocol_version is not None:
        flag = "-V mqttv5" if protocol_version == 5 else "-V mqttv311"
        try:
            config = config.with_protocol(
                "5" if protocol_version == 5 else "3.1.1", f"{config_path} with {flag}"
            )
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    target = _target(config, broker_url, credentials)
    part = _shard(shard, shards)
    timeline = _timeline(html_path)
    with _fleet_metrics(metrics_port, metrics_host, part, "fleet run") as metrics:
        report = _simulate(
            config_path,
            config,
            target,
            duration=duration or config.duration,
            shard=part,
            workers=workers,
            followers=tuple(f for f in (metrics, timeline) if f is not None),
        )
        if metrics is not None:
            metrics.finish(report)
        if html_path is not None:
            _write_html(html_path, f"fleet run: {config_path.name}", report, timeline=timeline)
        _finish(report, report_path, "fleet run")
        _hold_metrics(metrics, metrics_hold)


@cli.command()
@click.argument("config_paths", metavar="CONFIG...", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(config_paths: tuple[Path, ...]) -> None:
    """Check fleet config files; print each file's first error as 'file: field.path: reason'."""
    from bridges.config import load_bridge_config
    from broker.config import load_broker_settings
    from fleet.stress.scenario import load_stress_settings

    failed = False
    for path in config_paths:
        try:
            config = _load_fleet(path, None)
            if config.broker is None:
                load_broker_settings(path, {})
            if config.bridge:
                load_bridge_config(path, {})
            if config.stress:
                load_stress_settings(path, config)
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
@click.argument(
    "paths", metavar="REPORT|DIR...", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write the merged JSON here")
@click.option("--partial", is_flag=True, help="merge even when shards are missing; the report lists them")
def report_merge(paths: tuple[Path, ...], output: Path | None, partial: bool) -> None:
    """Merge the reports of the shards of one run (`fleet run --shard I/N`), and print its summary.

    A directory stands for its *.json files. Refuses a file or a shard given twice, a report that is
    not a `fleet run` report, shards of another config, seed or shard count, and missing shards
    unless --partial. Exits 1 when a shard was cut short: the merged report then
    says complete: false.
    """
    from fleet.report import merge_shard_files, shard_files

    try:
        merged = merge_shard_files(shard_files(paths), partial=partial)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(merged, output, "fleet report merge")
    cut = [str(run.get("shard")) for run in merged.runs() if run.get("complete") is False]
    if cut:
        raise click.ClickException(
            f"shard {', '.join(cut)} was cut short: the merged report says complete: false"
        )


@report.command("html")
@click.argument("path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="the HTML file to write")
def report_html(path: Path, output: Path) -> None:
    """Write the HTML page of a `fleet run` report (one shard's, or merged) as `fleet run --html` does,
    without the timeline, which a report does not keep."""
    from fleet.report import Report

    try:
        loaded = Report.load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _write_html(output, f"fleet report: {path.name}", loaded, "fleet report html")


_PORT = click.IntRange(0, 65535)


@cli.command()
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=DEMO_CONFIG,
    help="a fleet config; its [broker] and [bridge] tables set the ports  [default: configs/demo.toml]",
)
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="seconds; default: until Ctrl-C"
)
@click.option(
    "--port", type=_PORT, help="the broker's MQTT/TCP port, 0 picks a free one  [default: the config's]"
)
@click.option(
    "--ws-port", type=_PORT, help="the broker's MQTT/WebSocket port, 0 turns it off  [default: the config's]"
)
@click.option(
    "--http-port",
    type=_PORT,
    help="the bridge's SSE, WebSocket, dashboard; 0 picks a free port  [default: the config's]",
)
@click.option(
    "--grpc-port", type=_PORT, help="the bridge's gRPC port; 0 picks a free one  [default: the config's]"
)
def up(
    config: Path,
    duration: float | None,
    port: int | None,
    ws_port: int | None,
    http_port: int | None,
    grpc_port: int | None,
) -> None:
    """The all-in-one demo: the embedded broker, the demo fleet and the bridges, until Ctrl-C.

    In a terminal, `fleet watch` shows the fleet in the foreground; otherwise the logs and a
    progress line go to standard error.
    """
    click.echo(f"fleet up: demo from {config}; press Ctrl-C to stop", err=True)
    fleet_config = _load_fleet(config, None)
    target = _target(fleet_config, None)
    broker_overrides = {
        key: value for key, value in (("port", port), ("ws_port", ws_port)) if value is not None
    }
    if target is not None and broker_overrides:
        option = "--port" if port is not None else "--ws-port"
        raise click.UsageError(
            f"{option} sets the embedded broker's port; {config} targets {target.endpoint}"
        )
    bridge_overrides = {
        key: value for key, value in (("http_port", http_port), ("grpc_port", grpc_port)) if value is not None
    }
    report = _simulate(
        config,
        fleet_config,
        target,
        duration=duration,
        shard=_shard(None),
        workers=1,
        bridges=True,
        watch=sys.stdout.isatty() and sys.stdin.isatty(),
        broker_overrides=broker_overrides,
        bridge_overrides=bridge_overrides,
    )
    _finish(report, None, "fleet up")


@cli.command()
@click.option(
    "--broker",
    "broker_url",
    default="mqtt://127.0.0.1:1883",
    show_default=True,
    help="mqtt[s]:// or ws[s]://",
)
@click.option("--prefix", default="fleet", show_default=True, help="first topic level of the fleet's topics")
@click.option(
    "--export-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="where `e` writes the history",
)
@_protocol_option(
    "the MQTT version spoken to the broker; mqttv5 shows properties and reason codes  [default: mqttv311]"
)
@_client_options
def watch(
    broker_url: str, prefix: str, export_dir: Path, protocol_version: int | None, credentials: Credentials
) -> None:
    """A live view of the fleet on any broker: devices, topics, events, and commands to devices.

    With -V mqttv5 the device view shows the MQTT 5 properties of a device's messages and the
    reason codes the broker answers commands with, and the event log a broker's DISCONNECT with its
    reason code, the code's name and the broker's reason string."""
    from fleet.endpoint import Endpoint
    from fleet.simulator import Target
    from fleet.watch.app import WatchApp
    from fleet.watch.sources import MqttSource

    url, from_url = _split_url(broker_url, "--broker")
    try:
        target = Target(Endpoint.parse(url), from_url.override(credentials))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None
    if not prefix or any(c in prefix for c in "/+#\x00"):
        raise click.BadParameter("one topic level, without '/', '+' or '#'", param_hint="--prefix")
    try:
        login = target.login()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    source = MqttSource(
        target.endpoint,
        prefix=prefix,
        username=login.username,
        password=login.password,
        ssl=login.ssl,
        version=protocol_version or 4,
    )
    app = WatchApp(source, prefix=prefix, export_dir=export_dir)
    with app.logs_in_event_log():
        SIGNALS.run(lambda stop: _run_app(app, stop))


async def _run_app(app: Any, stop: asyncio.Event) -> None:
    """Run the TUI until it quits, or until `stop` asks it to."""
    async with asyncio.TaskGroup() as tasks:
        closer = tasks.create_task(stop.wait(), name="fleet.watch.stop")
        closer.add_done_callback(lambda waited: waited.cancelled() or app.exit())
        await app.run_async()
        closer.cancel()


@cli.command("bridge")
@click.option("--config", type=click.Path(path_type=Path), help="TOML file; its [bridge] table")
@click.option("--broker", help="broker URL to bridge from  [default: mqtt://127.0.0.1:1883]")
@_protocol_option("MQTT version of the link to the broker  [default: the config's protocol, else mqttv311]")
@click.option("--host", help="address to listen on  [default: 127.0.0.1]")
@click.option("--http-port", type=int, help="SSE, WebSocket, /metrics; 0 picks a free port  [default: 8080]")
@click.option("--grpc-port", type=int, help="gRPC; 0 picks a free port  [default: 50051]")
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="clients must present one of these tokens (see `fleet token add`)",
)
@click.option(
    "--no-auth", is_flag=True, help="off loopback, serve without tokens: anyone may command devices"
)
@click.option(
    "--allowed-host", "allowed_hosts", multiple=True, help="a Host name clients may use; repeatable"
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="serve TLS: certificate (PEM)"
)
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="serve TLS: its key (PEM)")
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="require client certificates signed by this CA (mTLS)",
)
def bridge_command(config: Path | None, **options: Any) -> None:
    """Republish MQTT messages to WebSocket, Server-Sent Events and gRPC consumers.

    Off loopback (--host), clients must authenticate with a token from --tokens-file, unless
    --no-auth is given."""
    from bridges.config import load_bridge_config

    version = options.pop("protocol_version")
    options["protocol"] = None if version is None else {5: "5", 4: "3.1.1"}[version]
    # Unset options, and flags not given, leave the config's value.
    overrides = {
        key: value
        for key, value in options.items()
        if value is not None and value is not False and value != ()
    }
    try:
        settings = load_bridge_config(config, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        SIGNALS.run(lambda stop: _run_bridge(settings, stop))
    except* OSError as group:
        raise click.ClickException(f"cannot listen: {_first(group)}") from None
    except* ConfigError as group:
        raise click.ClickException(str(_first(group))) from None


@cli.group("token")
def token_group() -> None:
    """Access tokens of the bridges (WebSocket, SSE, gRPC)."""


@token_group.command("add")
@click.argument("name")
@click.option(
    "--tokens-file", type=click.Path(dir_okay=False, path_type=Path), required=True, help="made if missing"
)
@click.option("--subscribe", multiple=True, help="a topic filter it may subscribe to (or within); repeatable")
@click.option(
    "--publish", multiple=True, help="a topic pattern it may publish to, e.g. fleet/{device}/cmd; repeatable"
)
def token_add(name: str, tokens_file: Path, subscribe: tuple[str, ...], publish: tuple[str, ...]) -> None:
    """Add the token NAME to a tokens file and print it, once: the file keeps only its SHA-256.

    A token given no --subscribe and no --publish may do nothing."""
    from bridges.tokens import append_token

    try:
        token = append_token(tokens_file, name, subscribe, publish)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    click.echo(f"fleet token: added {name!r} to {tokens_file}; the token is shown only this once", err=True)


async def _run_bridge(settings: Any, stop: asyncio.Event) -> None:
    from bridges.bridge import running

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


@cli.command("cmd", context_settings={"ignore_unknown_options": True})  # a VALUE of -1 is not an option
@click.argument("device")
@click.argument("op")
@click.argument("value", required=False)
@click.option(
    "--broker",
    "broker_url",
    default="mqtt://127.0.0.1:1883",
    show_default=True,
    help="mqtt[s]:// or ws[s]:// URL",
)
@click.option("--prefix", default="fleet", show_default=True, help="first topic level of the fleet's topics")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="seconds to wait",
)
@_protocol_option("the link's MQTT version  [default: MQTT 5 when the device's retained birth says so]")
@_client_options
def cmd_command(
    device: str,
    op: str,
    value: str | None,
    broker_url: str,
    prefix: str,
    timeout: float,
    protocol_version: int | None,
    credentials: Credentials,
) -> None:
    """Send command OP (with VALUE, a JSON number or text) to DEVICE and wait for its ack.

    The command goes to PREFIX/DEVICE/cmd. Over MQTT 5 it carries a Response Topic and Correlation
    Data, and a v5 device answers on that topic; the answer is also taken from PREFIX/DEVICE/cmd/ack,
    where 3.1.1 devices answer. The ack is printed as one JSON line.

    Exit status: 0 on an ack with ok true; 1 when no ack came within --timeout or the broker could
    not be reached; 2 on an ack with ok false (and for bad input).
    """
    import json

    from fleet.command import Request, send_command
    from fleet.credentials import split_url
    from fleet.errors import ConnectRefused, TopicError, TransportError
    from fleet.simulator import Target
    from fleet.transport import Endpoint

    try:
        url, from_url = split_url(broker_url)
        target = Target(Endpoint.parse(url), from_url.override(credentials))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None
    parsed: Any = None
    if value is not None:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
    try:
        request = Request(device=device, op=op, value=parsed, prefix=prefix)
    except TopicError as exc:
        raise click.BadParameter(str(exc), param_hint="DEVICE or --prefix") from None
    try:
        reply = asyncio.run(send_command(target, request, timeout=timeout, version=protocol_version))
    except (TransportError, ConnectRefused, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if reply is None:
        click.echo(f"fleet cmd: no ack from {device} within {timeout:g}s", err=True)
        sys.exit(1)
    click.echo(json.dumps(reply.body, separators=(",", ":")))
    if not reply.ok:
        click.echo(f"fleet cmd: {device} refused {op}: {reply.body.get('error', 'ok is not true')}", err=True)
        sys.exit(2)


@cli.command("tail")
@click.argument("url")
@click.option("--filter", "filters", multiple=True, help="topic filter; repeatable  [default: the URL's]")
@click.option("--count", type=click.IntRange(min=1), help="stop after N events; fewer is a failure (exit 1)")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="stop after S seconds")
@click.option(
    "--expect",
    "expect",
    help="exit 0 once an event matches, e.g. 'topic=fleet/+/status,payload.online=false'",
)
@click.option("--format", "output", type=click.Choice(["json", "pretty"]), default="json", show_default=True)
@click.option(
    "--token",
    envvar="FLEET_TOKEN",
    show_envvar=True,
    help="a bridge's access token (fleet token add); FLEET_TOKEN keeps it out of the shell history",
)
@_protocol_option(
    "the MQTT version spoken to a broker; mqttv5 prints the messages' properties  [default: mqttv311]"
)
@_client_options
def tail_command(
    url: str,
    filters: tuple[str, ...],
    count: int | None,
    timeout: float | None,
    expect: str | None,
    output: str,
    token: str | None,
    protocol_version: int | None,
    credentials: Credentials,
) -> None:
    """Print the events of an MQTT, WebSocket, SSE or gRPC stream as JSON lines.

    URL: mqtt[s]://HOST:PORT/FILTER, ws[s]://... (JSON, or MQTT over WebSocket when the server
    accepts the subprotocol 'mqtt'), http[s]://... (Server-Sent Events) or grpc[s]://HOST:PORT/FILTER.

    With -V mqttv5 a broker is read over MQTT 5, and each event carries the message's properties
    (user properties as ordered [key, value] pairs, correlation data in base64); --expect can then
    ask for user_property.KEY=VALUE and content_type=TYPE.

    Exit status: 0 when --count events arrived or --expect was met (or, without them, at
    --timeout, the stream's end or Ctrl-C); 1 when fewer than --count events came, --expect was
    not met, or the stream could not be read, with one line saying why; 130 on Ctrl-C (143 on
    SIGTERM) before --count or --expect was met; 2 for bad input.

    A broker's URL may carry `user:password@` (never shown again); -u, -P, --password-file,
    --cafile, --cert, --key and --insecure are mosquitto_sub's, and win over the URL's. A bridge
    with a tokens file takes --token (or FLEET_TOKEN) on ws[s]://, http[s]:// and grpc[s]:// URLs.
    """
    from fleet.errors import TransportError
    from fleet.tail import Source, format_event, tail
    from fleet.testing.streams import Expectation, StreamEvent

    from_env = (
        click.get_current_context().get_parameter_source("token") == click.core.ParameterSource.ENVIRONMENT
    )
    if from_env and url.lower().startswith("mqtt"):
        token = None  # FLEET_TOKEN is for the bridges, not for a broker
    try:
        source = Source.parse(
            url, filters, dataclasses.replace(credentials, token=token or None), protocol_version
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL or --filter") from None
    try:
        expectation = Expectation.parse(expect) if expect is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expect") from None
    printed = 0

    def write(event: StreamEvent) -> None:
        nonlocal printed
        click.echo(format_event(event, pretty=output == "pretty"))
        printed += 1

    def note(line: str) -> None:
        click.echo(f"fleet tail: {line}", err=True)

    try:
        finished = SIGNALS.run(
            lambda stop: _unless_stopped(
                stop,
                tail(source, count=count, timeout=timeout, expectation=expectation, write=write, note=note),
            )
        )
    except (TransportError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    if finished is None:
        # Stop as mosquitto_sub does (0), unless a goal was set and not met: then the run failed.
        if expectation is None and count is None:
            return
        signum = SIGNALS.stopped_by or signal.SIGINT
        goal = f"--expect {expect}" if expectation is not None else f"--count {count}"
        click.echo(
            f"fleet tail: interrupted by {signal_name(signum)} after {printed} events, before {goal} was met",
            err=True,
        )
        sys.exit(128 + signum)
    failure = finished[0]
    if failure is not None:
        raise click.ClickException(failure)


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, _T]) -> tuple[_T] | None:
    """(`work`'s result,), or None when `stop` is set first (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (task, stopped):
            future.cancel()
        await asyncio.wait((task, stopped))
    return None if task.cancelled() else (task.result(),)


def _seconds(ctx: click.Context, param: click.Parameter, text: str | None) -> float | None:
    """'5', '5s' or '500ms' as seconds, for --max-reconnect-p99."""
    if text is None:
        return None
    value = text.strip().lower()
    scale = 1.0
    if value.endswith("ms"):
        value, scale = value[:-2], 0.001
    elif value.endswith("s"):
        value = value[:-1]
    try:
        seconds = float(value) * scale
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected seconds, like 5s or 500ms") from None
    if not seconds >= 0:
        raise click.BadParameter(f"{text!r}: must not be negative")
    return seconds


GATE_FAILED = 3


class _Scenarios(click.Choice[str]):
    """The built-in stress scenarios as choices, read from their registry only when `fleet stress`
    checks or shows the option, so that every other command starts without loading it."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from fleet.stress.scenario import SCENARIOS

        return SCENARIOS


@cli.command("stress")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option(
    "--scenario", type=_Scenarios(), help="a built-in scenario; default: the config's [stress] table"
)
@click.option(
    "--broker", "broker_url", help="mqtt[s]:// or ws[s]:// URL; default: the config's, else embedded"
)
@click.option("--broker-pid", type=int, help="PID of a local external broker, for its CPU and RSS")
@click.option(
    "--broker-cmd",
    help="a command that runs the --broker broker (like 'mosquitto -c m.conf'): fleet stress starts it, "
    "restarts it for broker-restart and broker-crash, and stops it at the end",
)
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="seconds; default: [stress]")
@click.option("--seed", type=int, help="overrides the config's seed")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="write the JSON report here")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="write JUnit XML here")
@click.option(
    "--max-loss-qos1",
    type=click.IntRange(min=0),
    help="gate: acknowledged QoS 1 messages lost in persistent sessions",
)
@click.option("--max-dup-qos2", type=click.IntRange(min=0), help="gate: QoS 2 messages delivered twice")
@click.option("--max-reconnect-p99", callback=_seconds, help="gate: reconnect time p99, like 5s or 500ms")
@click.option("--require-wills", is_flag=True, help="gate: every expected will came, and no spurious one")
@click.option(
    "--max-expired", type=click.IntRange(min=0), help="gate: messages expired under MQTT 5 Message Expiry"
)
@_protocol_option("every group speaks this MQTT version, and so does the observer  [default: each group's]")
@_client_options
@_metrics_options(hold=True)
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="write an HTML report with charts")
def stress_command(
    config_path: Path,
    scenario: str | None,
    broker_url: str | None,
    broker_pid: int | None,
    broker_cmd: str | None,
    duration: float | None,
    seed: int | None,
    report_path: Path | None,
    junit_path: Path | None,
    max_loss_qos1: int | None,
    max_dup_qos2: int | None,
    max_reconnect_p99: float | None,
    require_wills: bool,
    max_expired: int | None,
    protocol_version: int | None,
    credentials: Credentials,
    metrics_port: int | None,
    metrics_host: str,
    metrics_hold: float,
    html_path: Path | None,
) -> None:
    """Run a stress scenario on the fleet of CONFIG and account for every message and will.

    -u, -P, --cafile, --cert and --key (with --broker, or the config's [broker] url) are the
    credentials of the devices and the observer, and win over the config's. -V mqttv5 makes every
    group an MQTT 5 group (and the observer MQTT 5); -V mqttv311 every group a 3.1.1 group. Exits 3
    when a gate fails, and 128 + the signal (130 for Ctrl-C) when the run is cut short.
    """
    from fleet.errors import FleetError
    from fleet.stress.accounting import Gates
    from fleet.stress.report import stress_table, write_json, write_junit
    from fleet.stress.scenario import load_stress_settings

    gates = Gates(max_loss_qos1, max_dup_qos2, max_reconnect_p99, require_wills, max_expired)
    config = _load_fleet(config_path, seed)
    if protocol_version is not None:
        flag = "-V mqttv5" if protocol_version == 5 else "-V mqttv311"
        try:
            config = config.with_protocol(
                "5" if protocol_version == 5 else "3.1.1", f"{config_path} with {flag}"
            )
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        settings = load_stress_settings(config_path, config, scenario, duration)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    target = _target(config, broker_url, credentials)
    argv = shlex.split(broker_cmd) if broker_cmd is not None else None
    if argv is not None and (broker_url is None or not argv):
        raise click.BadParameter(
            "give the command, and --broker with the URL it listens on", param_hint="--broker-cmd"
        )
    timeline = _timeline(html_path)
    with _fleet_metrics(metrics_port, metrics_host, _shard(None), "fleet stress") as metrics:
        followers = tuple(f for f in (metrics, timeline) if f is not None)
        try:
            result = SIGNALS.run(
                lambda stop: _run_stress(
                    config_path, config, settings, target, broker_pid, stop, followers, argv
                )
            )
        except* FleetError as group:
            raise click.ClickException(str(_first(group))) from None
        except* OSError as group:
            raise click.ClickException(str(_first(group))) from None
        if metrics is not None:
            metrics.finish(result.fleet)
        if not result.complete and SIGNALS.stopped_by is not None:
            result.meta["stopped_by"] = signal_name(SIGNALS.stopped_by)
        checked = gates.check(result.account, complete=result.complete)
        _print_table(stress_table(result, checked))
        if report_path is not None:
            write_json(report_path, result, checked)
            click.echo(f"fleet stress: report written to {report_path}", err=True)
        if junit_path is not None:
            write_junit(junit_path, result, checked)
            click.echo(f"fleet stress: JUnit XML written to {junit_path}", err=True)
        if html_path is not None:
            _write_stress_html(html_path, config_path, result, checked, timeline)
        failed = [gate for gate in checked if not gate.passed]
        for gate in failed:
            click.echo(f"fleet stress: gate {gate.name} failed: {gate.detail}", err=True)
        if not result.complete:
            planned = f"{settings.duration:g} s"
            _cut_short(
                "fleet stress", f"after {result.meta['duration_s']:.1f} s of {planned}: no gate passes"
            )
        _hold_metrics(metrics, metrics_hold)
    if failed:
        sys.exit(GATE_FAILED)


def _write_stress_html(path: Path, config_path: Path, result: Any, checked: Any, timeline: Any) -> None:
    from rich.text import Text

    from fleet.html_report import Gate
    from fleet.stress.report import mqtt5_rows

    latency = {
        f"QoS {row.qos}, {'persistent' if row.persistent else 'clean'} session": row.latency
        for row in result.account.telemetry
    }
    _write_html(
        path,
        f"fleet stress: {result.meta['scenario']} on {config_path.name}",
        result.fleet,
        "fleet stress",
        timeline=timeline,
        stages=result.meta["timeline"],
        latency=latency,
        latency_title="Delivery latency (send to observer), by QoS and session",
        gates=[Gate(gate.name, gate.passed, gate.detail) for gate in checked],
        promises=[
            (name, Text.from_markup(text).plain)
            for name, text in [
                *mqtt5_rows(result.account),
                ("violations", "; ".join(result.account.violations) or "none"),
            ]
        ],
    )


async def _run_stress(
    config_path: Path,
    config: Any,
    settings: Any,
    target: Any,
    broker_pid: int | None,
    stop: asyncio.Event,
    followers: tuple[Any, ...] = (),
    broker_cmd: list[str] | None = None,
) -> Any:
    from rich.console import Console

    from fleet.progress import progress
    from fleet.simulator import Live
    from fleet.stress.runner import run_stress

    live = Live()
    where = "the embedded broker" if target is None else str(target.endpoint)
    click.echo(f"fleet stress: {config.size:,} devices -> {where}, {settings.duration:g}s", err=True)
    async with progress(Console(stderr=True), lambda: live), contextlib.AsyncExitStack() as stack:
        for follower in followers:  # the metrics endpoint, the HTML report's timeline
            await stack.enter_async_context(follower.following(live))
        return await run_stress(
            config,
            settings,
            target=target,
            config_path=config_path,
            broker_pid=broker_pid,
            live=live,
            stop=stop,
            broker_cmd=broker_cmd,
        )


@cli.command()
@click.argument("password_file", type=click.Path(path_type=Path))
@click.argument("username")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="read the password from the first line of standard input, even from a terminal",
)
def passwd(password_file: Path, username: str, password_stdin: bool) -> None:
    """Add or replace USERNAME in PASSWORD_FILE (PBKDF2-SHA512, Mosquitto's format).

    From a terminal it asks for the password twice, without echo. When standard input is not a
    terminal (a pipe, a file), the password is its first line, read once.
    """
    from broker.auth import set_password

    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
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
