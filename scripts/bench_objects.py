"""scripts/bench --scenario many-queues: many durable queues and bindings at once, Warren next to
RabbitMQ: how fast they are declared, what each costs in broker memory, and what a monitoring
scrape costs with that many objects.

A durable topic exchange, then --queues Q (10k) durable queues, then --bindings B (100k)
bindings from the exchange: binding n goes to queue n mod Q with routing key k<n> (B / Q per
queue, all keys distinct). Declares and binds go with no-wait on one channel, BATCH at a time,
each batch closed by a synchronous Basic.Qos (bench_support.pipelined): pika's blocking API waits
a round trip per method, so this measures the broker, with the same client for both. Printed per
broker: queues/s and bindings/s (first method to the last batch's Qos-Ok), RSS per queue and per
binding (RSS growth over each step, read SETTLE s after it, / count) and the cost of listing
them: GET /metrics and /metrics/per-object (the Prometheus endpoints) and the management API's
/api/queues, SCRAPES times each (SCRAPE_GAP apart), median seconds and response size. The queue
and binding counts are checked through the management API. Finally the queues and the exchange
are deleted (that rate is printed too). Warren is a fresh broker process with its metrics and
management listeners on free ports; RabbitMQ is the node on 5672, its Prometheus plugin started
at runtime if it is not running (rabbitmqctl eval, listening on 127.0.0.1 on a free port;
enabled_plugins and the config files are not touched, and what was started is stopped
afterwards). One run per broker, within a share of --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pamqp import commands

from scripts.amqp_loadgen import connect
from scripts.bench_support import (
    RABBITMQ_MANAGEMENT,
    RABBITMQ_PORT,
    Row,
    broker_pid,
    management_get,
    management_json,
    method_frame,
    pipelined,
    resident_bytes,
    run,
    side_by_side,
)
from tests.support import BrokerProcess, free_port

SCRAPES = 5
BATCH = 500  # no-wait methods per round trip
# Seconds between the starts of two GETs of the same endpoint: Warren reuses a /metrics rendering
# for a second (metrics.RENDER_REUSE_SECONDS), and Prometheus scrapes every 15-60 s anyway.
SCRAPE_GAP = 1.5
SETTLE = 1.0  # seconds before an RSS reading, for the broker's follow-up work (statistics)
STALL = 300.0  # seconds a batch of declares may take before the run counts as stuck
CLEANUP_TIMEOUT = 600.0  # seconds to delete everything, on top of --timeout
ENDPOINTS = ("/metrics", "/metrics/per-object", "/api/queues")


@dataclass
class Outcome:
    """One broker's figures, filled in as the run goes, so a timeout keeps what it measured."""

    queue_rate: float | None = None
    binding_rate: float | None = None
    delete_rate: float | None = None
    per_queue: float | None = None
    per_binding: float | None = None
    scrapes: dict[str, tuple[float, int]] = field(default_factory=dict)  # (median s, bytes)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


async def _declare(
    port: int, pid: int, exchange: str, queues: list[str], bindings: int, outcome: Outcome
) -> None:
    """The exchange, the queues, the bindings, each step timed and its RSS growth taken."""
    queue_frames = [
        method_frame(commands.Queue.Declare(queue=queue, durable=True, nowait=True))
        for queue in queues
    ]
    bind_frames = [
        method_frame(
            commands.Queue.Bind(
                queue=queues[number % len(queues)],
                exchange=exchange,
                routing_key=f"k{number}",
                nowait=True,
            )
        )
        for number in range(bindings)
    ]
    client = await connect("127.0.0.1", port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        declare = commands.Exchange.Declare(exchange=exchange, exchange_type="topic", durable=True)
        await client.call(1, declare, commands.Exchange.DeclareOk)
        await asyncio.sleep(SETTLE)
        before = resident_bytes(pid)
        started = time.perf_counter()
        await pipelined(client, queue_frames, STALL, BATCH)
        outcome.queue_rate = len(queues) / (time.perf_counter() - started)
        await asyncio.sleep(SETTLE)
        with_queues = resident_bytes(pid)
        outcome.per_queue = (with_queues - before) / len(queues)
        if bindings:
            started = time.perf_counter()
            await pipelined(client, bind_frames, STALL, BATCH)
            outcome.binding_rate = bindings / (time.perf_counter() - started)
            await asyncio.sleep(SETTLE)
            outcome.per_binding = (resident_bytes(pid) - with_queues) / bindings
    finally:
        await client.close()


async def _delete(port: int, exchange: str, queues: list[str], outcome: Outcome) -> None:
    deletes = [method_frame(commands.Queue.Delete(queue=queue, nowait=True)) for queue in queues]
    client = await connect("127.0.0.1", port)
    try:
        await client.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        started = time.perf_counter()
        await pipelined(client, deletes, CLEANUP_TIMEOUT, BATCH)
        outcome.delete_rate = len(queues) / (time.perf_counter() - started)
        await client.call(
            1, commands.Exchange.Delete(exchange=exchange), commands.Exchange.DeleteOk
        )
    finally:
        await client.close()


def _time_get(base: str, path: str, management: bool, deadline: float) -> tuple[float, int, bytes]:
    """GET base + path SCRAPES times, SCRAPE_GAP apart (fewer once past `deadline`): the median
    seconds, the response size and the last body."""
    seconds: list[float] = []
    body = b""
    for _ in range(SCRAPES):
        if seconds:
            time.sleep(max(0.0, SCRAPE_GAP - seconds[-1]))
        timeout = max(30.0, deadline - time.monotonic())
        started = time.perf_counter()
        if management:
            body = management_get(base, path, timeout)
        else:
            with urllib.request.urlopen(base + path, timeout=timeout) as response:
                body = response.read()
        seconds.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return statistics.median(seconds), len(body), body


def _scrape(
    metrics: str | None, management: str, outcome: Outcome, deadline: float, prefix: str
) -> list[str]:
    """Time each endpoint; returns our queues' names as /api/queues listed them."""
    names: list[str] = []
    for endpoint in ENDPOINTS:
        is_api = endpoint.startswith("/api/")
        base = management if is_api else metrics
        if base is None:
            continue
        try:
            median, size, body = _time_get(base, endpoint, is_api, deadline)
        except OSError as error:
            outcome.notes.append(f"GET {endpoint} failed: {error}")
            continue
        outcome.scrapes[endpoint] = (median, size)
        if is_api:
            names = [row["name"] for row in json.loads(body) if row["name"].startswith(prefix)]
    return names


def _check_counts(
    management: str, exchange: str, names: list[str], queues: int, bindings: int, outcome: Outcome
) -> None:
    """Every queue listed by /api/queues, every binding by the exchange's source bindings."""
    if len(names) != queues:
        outcome.failed = True
        outcome.notes.append(f"/api/queues lists {len(names)} of the {queues} queues")
    path = f"/api/exchanges/%2F/{exchange}/bindings/source"
    try:
        listed = len(management_json(management, path, timeout=300))
    except (OSError, ValueError) as error:
        outcome.notes.append(f"could not list the exchange's bindings to count them: {error}")
        return
    if listed != bindings:
        outcome.failed = True
        outcome.notes.append(f"the exchange lists {listed} of the {bindings} bindings")


def _measure(
    port: int,
    management: str,
    metrics: str | None,
    queue_count: int,
    bindings: int,
    budget: float,
) -> Outcome:
    """One broker's run within `budget` seconds, then everything it declared deleted."""
    outcome = Outcome()
    prefix = f"bench-objects-{uuid.uuid4().hex[:8]}"
    exchange = prefix
    queues = [f"{prefix}-{number}" for number in range(queue_count)]
    deadline = time.monotonic() + budget
    pid = broker_pid(management)
    try:
        run(asyncio.wait_for(_declare(port, pid, exchange, queues, bindings, outcome), budget))
        names = _scrape(metrics, management, outcome, deadline, prefix)
        _check_counts(management, exchange, names, queue_count, bindings, outcome)
    except TimeoutError:
        outcome.failed = True
        outcome.notes.append(f"gave up after {budget:.0f} s (its share of --timeout)")
    except (OSError, RuntimeError, ValueError) as error:
        outcome.failed = True
        outcome.notes.append(f"failed: {error}")
    finally:
        try:
            run(asyncio.wait_for(_delete(port, exchange, queues, outcome), CLEANUP_TIMEOUT))
        except (OSError, RuntimeError, TimeoutError) as error:
            outcome.failed = True
            outcome.notes.append(f"could NOT delete exchange {exchange} and its {queue_count}"
                                 f" queues {prefix}-* ({error})")  # fmt: skip
    return outcome


def _rabbitmqctl_eval(expression: str) -> str | None:
    """rabbitmqctl eval as root (sudo -n when not root); None if it cannot run or fails."""
    command = ["rabbitmqctl", "-q", "eval", expression]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return " ".join(done.stdout.split())


# Start rabbitmq_prometheus in the running node unless it runs already: the plugin's code ships
# with RabbitMQ, so it only needs loading and starting; its listener goes to 127.0.0.1:PORT
# unless the node's config gives it one. Prints {running, Port} or {started, Port, WasLoaded,
# ListenerSetHere, [apps started]}.
START_PROMETHEUS = """
case lists:keymember(rabbitmq_prometheus, 1, application:which_applications()) of
  true ->
    {running, proplists:get_value(port,
       application:get_env(rabbitmq_prometheus, tcp_config, []), 15692)};
  false ->
    Loaded = lists:keymember(rabbitmq_prometheus, 1, application:loaded_applications()),
    application:load(rabbitmq_prometheus),
    Set = case application:get_env(rabbitmq_prometheus, tcp_config) of
      undefined ->
        ok = application:set_env(rabbitmq_prometheus, tcp_config,
                                 [{port, PORT}, {ip, "127.0.0.1"}]),
        true;
      _ -> false
    end,
    {ok, Started} = application:ensure_all_started(rabbitmq_prometheus),
    {started, proplists:get_value(port,
       application:get_env(rabbitmq_prometheus, tcp_config, []), 15692), Loaded, Set, Started}
end.
"""


@contextlib.contextmanager
def rabbitmq_prometheus(notes: list[str]) -> Iterator[str | None]:
    """The base URL of RabbitMQ's Prometheus endpoint for the duration, or None (with a note)
    when the plugin cannot be started; what this started is stopped again at the end."""
    reply = _rabbitmqctl_eval(START_PROMETHEUS.replace("PORT", str(free_port())))
    running = re.fullmatch(r"\{running,(\d+)\}", reply or "")
    started = re.fullmatch(r"\{started,(\d+),(true|false),(true|false),\[([\w,]*)\]\}", reply or "")
    if running:
        notes.append(f"RabbitMQ's Prometheus plugin was already running (port {running[1]})")
        yield f"http://127.0.0.1:{running[1]}"
        return
    if not started:
        notes.append(
            f"RabbitMQ's Prometheus plugin could not be started at runtime ({reply or 'no'}"
            " rabbitmqctl reply): its /metrics rows are left empty; /api/queues is timed for"
            " both brokers"
        )
        yield None
        return
    port, was_loaded, set_here, apps = started.groups()
    notes.append(
        f"RabbitMQ's Prometheus plugin was started at runtime on 127.0.0.1:{port} and stopped"
        " afterwards\n  (enabled_plugins and the config files untouched)"
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        undo = [f"application:stop({app})" for app in reversed(apps.split(",")) if app]
        if set_here == "true":
            undo.append("application:unset_env(rabbitmq_prometheus, tcp_config)")
        if was_loaded == "false":
            undo.append("application:unload(rabbitmq_prometheus)")
        if _rabbitmqctl_eval(", ".join([*undo, "ok."])) != "ok":
            notes.append("could NOT stop the Prometheus plugin again (rabbitmqctl eval failed)")


def _seconds(outcome: Outcome, endpoint: str) -> float | None:
    return outcome.scrapes[endpoint][0] if endpoint in outcome.scrapes else None


def _kib(outcome: Outcome, endpoint: str) -> float | None:
    return outcome.scrapes[endpoint][1] / 1024 if endpoint in outcome.scrapes else None


def many_queues(data_dir: Path, args: argparse.Namespace, with_rabbitmq: bool) -> int:
    """Warren (a fresh broker), then RabbitMQ; each within its share of --timeout."""
    queue_count, bindings = args.queues, args.bindings
    if queue_count < 1 or bindings < 0:
        print("--queues must be at least 1 and --bindings at least 0")
        return 2
    deadline = time.monotonic() + args.timeout
    names = ["warren", "rabbitmq"] if with_rabbitmq else ["warren"]
    results: dict[str, Outcome] = {}
    notes: list[str] = []
    for position, name in enumerate(names):
        budget = (deadline - time.monotonic()) / (len(names) - position)
        print(f"many-queues {name}: {queue_count} durable queues, {bindings} bindings, at most"
              f" {budget:.0f} s", flush=True)  # fmt: skip
        if name == "warren":
            metrics_port = free_port()
            broker = BrokerProcess(
                data_dir,
                None,
                "--metrics-port",
                str(metrics_port),
                management_port=free_port(),
                start_timeout=60,
            )
            try:
                management = f"http://127.0.0.1:{broker.management_port}"
                metrics = f"http://127.0.0.1:{metrics_port}"
                outcome = _measure(broker.port, management, metrics, queue_count, bindings, budget)
            finally:
                broker.stop(timeout=60)
        else:
            with rabbitmq_prometheus(notes) as metrics:
                outcome = _measure(
                    RABBITMQ_PORT, RABBITMQ_MANAGEMENT, metrics, queue_count, bindings, budget
                )
        results[name] = outcome
        print(f"many-queues {name}: {outcome.queue_rate or 0:.0f} queues/s,"
              f" {outcome.binding_rate or 0:.0f} bindings/s", flush=True)  # fmt: skip
    warren, rabbitmq = results["warren"], results.get("rabbitmq", Outcome())
    rows = [
        Row("declare (queues/s)", warren.queue_rate, rabbitmq.queue_rate, True),
        Row("bind (bindings/s)", warren.binding_rate, rabbitmq.binding_rate, True),
        Row("RSS per queue (B)", warren.per_queue, rabbitmq.per_queue, False),
        Row("RSS per binding (B)", warren.per_binding, rabbitmq.per_binding, False),
    ]
    for endpoint in ENDPOINTS:
        seconds = (_seconds(warren, endpoint), _seconds(rabbitmq, endpoint))
        rows.append(Row(f"GET {endpoint} (s, median)", *seconds, False, 4))
        size = (_kib(warren, endpoint), _kib(rabbitmq, endpoint))
        rows.append(Row(f"GET {endpoint} (KiB)", *size, False))
    rows.append(Row("delete (queues/s)", warren.delete_rate, rabbitmq.delete_rate, True))
    side_by_side(
        f"scenario many-queues: {queue_count} durable queues, {bindings} bindings from a durable"
        f" topic exchange\n  ({bindings // max(1, queue_count)} per queue, distinct keys),"
        f" declared with no-wait on one channel, {BATCH} per round trip;\n  each GET timed"
        f" {SCRAPES} times, {SCRAPE_GAP} s apart",
        rows,
    )
    if queue_count < 5_000:
        print("  (at this size RSS noise, garbage collection and allocator growth, can swamp"
              " the\n  per-object figures)")  # fmt: skip
    for note in notes:
        print(f"  {note}")
    for name, outcome in results.items():
        for note in outcome.notes:
            print(f"  {name}: {note}")
    return 1 if any(outcome.failed for outcome in results.values()) else 0
