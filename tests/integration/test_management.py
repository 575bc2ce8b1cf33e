"""The management side of a real broker process: what the API changes survives kill -9, a
RabbitMQ export loads at boot, the listener speaks HTTPS, and `warren ctl` sets policies.

The API's shapes and codes are the compat suite's (tests/compat/test_management_api.py and
test_rabbitmqadmin.py, which also run against RabbitMQ); these are the Warren-only parts.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pika
import pytest

from tests.compat.management import Management
from tests.support import PROJECT_ROOT, BrokerProcess, free_port, shipped_config, write_config

RABBITMQ_EXPORT = Path(__file__).parent / "data" / "rabbitmq-3.10-definitions.json"
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def start(data_dir: Path, config: Path | None = None) -> tuple[BrokerProcess, Management]:
    broker = BrokerProcess(data_dir, config, management_port=free_port())
    return broker, Management(broker.management_url)


def test_users_vhosts_permissions_and_policies_survive_kill_9(tmp_path: Path) -> None:
    """Everything the API sets is in the log before the API answers: after kill -9 the user
    logs in, its vhost and permissions are there, and the policy still limits the queue."""
    broker, api = start(tmp_path / "data")
    try:
        assert api.put("/api/vhosts/orders", {"description": "payment orders"}).status == 201
        reply = api.put("/api/users/ops", {"password": "ops-pw", "tags": "monitoring"})
        assert reply.status == 201
        body = {"configure": "^ops", "write": ".*", "read": ".*"}
        assert api.put("/api/permissions/orders/ops", body).status == 201
        policy = {"pattern": "^ops\\.", "definition": {"max-length": 2}, "apply-to": "queues"}
        assert api.put("/api/policies/orders/cap", policy).status == 201
    finally:
        broker.kill()

    broker, api = start(tmp_path / "data")
    try:
        vhost = api.get("/api/vhosts/orders").body
        assert vhost["description"] == "payment orders"
        assert api.as_user("ops", "ops-pw").get("/api/whoami").body == {
            "name": "ops",
            "tags": ["monitoring"],
        }
        assert api.get("/api/permissions/orders/ops").body["configure"] == "^ops"
        assert api.get("/api/policies/orders/cap").body["definition"] == {"max-length": 2}
        url = f"amqp://ops:ops-pw@127.0.0.1:{broker.port}/orders"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.queue_declare("ops.capped")
        for n in range(5):
            channel.basic_publish("", "ops.capped", str(n).encode())
        declared = channel.queue_declare("ops.capped", passive=True)
        assert declared.method.message_count == 2  # the policy applies after the restart
        connection.close()
    finally:
        broker.stop()


def test_a_deleted_vhost_stays_deleted_with_its_messages(tmp_path: Path) -> None:
    """Deleting a vhost through the API takes its durable queues and confirmed messages out
    of the log too: a restart does not bring them back, and the broker starts."""
    broker, api = start(tmp_path / "data")
    try:
        assert api.put("/api/vhosts/gone").status == 201
        url = f"amqp://guest:guest@127.0.0.1:{broker.port}/gone"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("kept-until-deleted", durable=True)
        channel.basic_publish("", "kept-until-deleted", b"x", PERSISTENT)
        assert api.delete("/api/vhosts/gone").status == 204
        assert not connection.is_open or _closed_by_broker(connection)
    finally:
        broker.kill()
    broker, api = start(tmp_path / "data")
    try:
        assert api.get("/api/vhosts/gone").status == 404
        assert [q["name"] for q in api.get("/api/queues").body] == []
    finally:
        broker.stop()


def _closed_by_broker(connection: pika.BlockingConnection) -> bool:
    try:
        connection.process_data_events(time_limit=2)
    except pika.exceptions.ConnectionClosedByBroker as closed:
        return closed.reply_code == 320
    return not connection.is_open


def test_a_rabbitmq_export_loads_at_boot(tmp_path: Path) -> None:
    """load_definitions takes a file exported from RabbitMQ 3.10 (with its password hash): the
    user logs in with RabbitMQ's password, the vhost, permissions, exchanges, queues, bindings
    and policy are there, and routing works through them."""
    settings = shipped_config()
    settings["load_definitions"] = str(RABBITMQ_EXPORT)
    broker, api = start(tmp_path / "data", write_config(tmp_path, settings))
    try:
        billing = api.as_user("billing", "billing-pw")
        assert billing.get("/api/whoami").body == {"name": "billing", "tags": ["management"]}
        queue = api.get("/api/queues/payments/payment.orders").body
        assert queue["arguments"] == {"x-max-priority": 5}
        assert queue["policy"] == "payment-retries"
        url = f"amqp://billing:billing-pw@127.0.0.1:{broker.port}/payments"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.basic_publish("payments", "order.new", b"order 1")
        assert channel.queue_declare("payment.orders", passive=True).method.message_count == 1
        channel.basic_publish("", "payment.orders", b"refused", pika.BasicProperties(priority=1))
        method, _, _ = channel.basic_get("payment.orders")
        channel.basic_reject(method.delivery_tag, requeue=False)  # through the policy's DLX
        assert channel.queue_declare("payment.dead", passive=True).method.message_count == 1
        connection.close()
    finally:
        broker.stop()
    assert "definitions.loaded" in broker.log_text()


def test_a_definitions_file_that_cannot_load_stops_the_broker_naming_the_entry(
    tmp_path: Path,
) -> None:
    document = json.loads(RABBITMQ_EXPORT.read_text())
    document["queues"][0]["arguments"] = {"x-max-priority": "high"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    settings = shipped_config()
    settings["load_definitions"] = str(bad)
    config = write_config(tmp_path, settings)
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--config", str(config), "--data-dir",
         str(tmp_path / "data"), "--port", "0", "--metrics-port", "0", "--management-port", "0"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 3
    assert "load_definitions" in result.stderr
    assert "queues[0]" in result.stderr and "x-max-priority" in result.stderr


def test_management_listener_speaks_https(tmp_path: Path) -> None:
    """management.listener with certfile and keyfile: rabbitmqadmin --ssl and a verifying
    client reach the API over TLS."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    settings = shipped_config()
    settings["management"] = {
        "listener": {"port": port, "certfile": str(cert), "keyfile": str(key)}
    }
    broker = BrokerProcess(
        tmp_path / "data", write_config(tmp_path, settings), "--management-port", str(port)
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/overview",
            headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            overview = json.loads(response.read())
        assert any(listener["protocol"] == "https" for listener in overview["listeners"])
        result = subprocess.run(
            ["/usr/bin/rabbitmqadmin", "--ssl", "--ssl-ca-cert-file", str(cert), "-H",
             "127.0.0.1", "-P", str(port), "-u", "guest", "-p", "guest", "list", "vhosts"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "| /    |" in result.stdout
    finally:
        broker.stop()


@pytest.mark.parametrize("command", ["set_policy", "clear_policy"])
def test_ctl_refuses_a_policy_command_without_its_arguments(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker", "ctl", command, "--management-port", "1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 64
    assert command in result.stderr


def test_ctl_sets_lists_and_clears_a_policy(tmp_path: Path) -> None:
    """rabbitmqctl's set_policy / list_policies / clear_policy, through the API."""
    broker, api = start(tmp_path / "data")

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", "ctl", *args, "--management-port", str(api.port)],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    try:
        result = ctl("set_policy", "--priority", "3", "--apply-to", "queues",
                     "ttl", "^payment\\.", '{"message-ttl": 60000}')  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert 'Setting policy "ttl"' in result.stdout
        listed = ctl("list_policies")
        assert listed.returncode == 0
        header, row = listed.stdout.splitlines()
        assert header.split("\t") == ["vhost", "name", "pattern", "apply-to", "definition",
                                      "priority"]  # fmt: skip
        assert row.split("\t") == ["/", "ttl", "^payment\\.", "queues",
                                   '{"message-ttl":60000}', "3"]  # fmt: skip
        bad = ctl("set_policy", "bad", "^x", '{"message-ttl": -1}')
        assert bad.returncode == 1
        assert "-1 is not a valid message TTL" in bad.stderr
        assert ctl("clear_policy", "ttl").returncode == 0
        assert ctl("list_policies").stdout.splitlines()[1:] == []
        missing = ctl("clear_policy", "ttl")
        assert missing.returncode == 1 and "Not Found" in missing.stderr
    finally:
        broker.stop()


def test_a_name_filter_that_would_backtrack_for_minutes_is_refused_at_once(tmp_path: Path) -> None:
    """Any management user may filter listings with a regex; (a|aa)+$ against a queue named
    with 60 a's and a '!' would hold Python's re (and the event loop) for minutes. It is cut
    off within its time budget and refused with 400, and AMQP clients never noticed."""
    broker, api = start(tmp_path / "data")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("a" * 60 + "!")
        reply = api.get("/api/queues?name=(a%7Caa)%2B%24&use_regex=true")
        assert reply.status == 400
        assert "took too long" in reply.body["reason"]
        assert channel.queue_declare("a" * 60 + "!", passive=True).method.message_count == 0
        fine = api.get("/api/queues?name=%5Ea%2B!%24&use_regex=true")
        assert [q["name"] for q in fine.body] == ["a" * 60 + "!"]
        connection.close()
    finally:
        broker.stop()


def test_what_rabbitmqadmin_v2_relies_on(tmp_path: Path) -> None:
    """rabbitmqadmin v2 (the Rust rewrite) deserialises responses into strict structs and
    builds some paths its own way (source read: rabbitmq/rabbitmqadmin-ng and
    rabbitmq-http-api-rs): consumers carry consumer_timeout as an integer, older builds need
    every churn rate, and `publish message` without --exchange posts to an empty segment."""
    broker, api = start(tmp_path / "data")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("v2-q", arguments={"x-consumer-timeout": 60000})
        channel.basic_consume("v2-q", lambda *_: None)
        [consumer] = api.get("/api/consumers").body
        assert consumer["consumer_timeout"] == 60000
        churn = api.get("/api/overview").body["churn_rates"]
        assert all(isinstance(churn[key], int) for key in ("queue_declared", "channel_closed"))
        body = {"routing_key": "v2-q", "payload": "hi", "payload_encoding": "string"}
        reply = api.post("/api/exchanges/%2F//publish", {**body, "properties": {}})
        assert (reply.status, reply.body) == (200, {"routed": True})
        connection.close()
    finally:
        broker.stop()


# ------------------------------------------------------------------- found in review (attacks)
def limited_user(api: Management, name: str = "lim") -> Management:
    """A management user whose permissions cover only names starting with its own."""
    assert api.put(f"/api/users/{name}", {"password": "pw", "tags": "management"}).status == 201
    pattern = f"^{name}-"
    body = {"configure": pattern, "write": pattern, "read": pattern}
    assert api.put(f"/api/permissions/%2F/{name}", body).status == 201
    return api.as_user(name, "pw")


def test_the_api_checks_dead_letter_and_alternate_exchange_permissions(tmp_path: Path) -> None:
    """Declaring a queue whose dead-letter exchange (or an exchange whose alternate) is one the
    user may not write to would let it publish there through its own queue: refused, as over
    AMQP (RabbitMQ's 403, the API's 401 "Access refused.")."""
    broker, api = start(tmp_path / "data")
    try:
        assert api.put("/api/exchanges/%2F/payments", {"type": "fanout"}).status == 201
        lim = limited_user(api)
        body = {"arguments": {"x-dead-letter-exchange": "payments", "x-message-ttl": 0}}
        reply = lim.put("/api/queues/%2F/lim-q", body)
        assert (reply.status, reply.body["reason"]) == (401, "Access refused.")
        reply = lim.put(
            "/api/exchanges/%2F/lim-x",
            {"type": "fanout", "arguments": {"alternate-exchange": "payments"}},
        )
        assert reply.status == 401
        assert lim.put("/api/queues/%2F/lim-ok", {"arguments": {"x-message-ttl": 5}}).status == 201
    finally:
        broker.stop()


def test_another_connections_exclusive_queue_is_locked_to_the_api(tmp_path: Path) -> None:
    """Purge and delete of a queue another connection holds exclusively: 400 with RabbitMQ's
    RESOURCE_LOCKED text, and the owner keeps its queue and messages."""
    broker, api = start(tmp_path / "data")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("mine", exclusive=True)
        channel.basic_publish("", "mine", b"kept")
        for method, path in (("DELETE", "/api/queues/%2F/mine/contents"),
                             ("DELETE", "/api/queues/%2F/mine")):  # fmt: skip
            reply = api.request(method, path)
            assert reply.status == 400
            assert reply.body["reason"].startswith("cannot obtain exclusive access to locked")
        assert channel.queue_declare("mine", passive=True).method.message_count == 1
        connection.close()
    finally:
        broker.stop()


def test_a_ttl_policy_does_not_expire_confirmed_messages_at_a_restart(tmp_path: Path) -> None:
    """Messages queued before a TTL policy keep living after it is set (as in RabbitMQ), and a
    restart does not change that: the policy applies once they are restored."""
    broker, api = start(tmp_path / "data")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("orders", durable=True)
        for n in range(3):
            channel.basic_publish("", "orders", str(n).encode(), PERSISTENT)
        connection.close()
        policy = {"pattern": "^orders$", "definition": {"message-ttl": 200}}
        assert api.put("/api/policies/%2F/ttl", policy).status == 201
    finally:
        broker.stop()
    broker, api = start(tmp_path / "data")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        connection.sleep(0.5)
        assert channel.queue_declare("orders", passive=True).method.message_count == 3
        assert api.get("/api/queues/%2F/orders").body["policy"] == "ttl"
        connection.close()
    finally:
        broker.stop()


def test_a_policy_cannot_grow_past_what_the_log_keeps(tmp_path: Path) -> None:
    """Deep or huge definitions (in keys Warren ignores, such as ha-params) are refused; the
    runtime document is logged as JSON text, so what is accepted always recovers."""
    broker, api = start(tmp_path / "data")
    try:
        deep: object = 1
        for _ in range(20):
            deep = [deep]
        body = {"pattern": "^x", "definition": {"ha-mode": "all", "ha-params": deep}}
        reply = api.put("/api/policies/%2F/deep", body)
        assert reply.status == 400 and "nested deeper" in reply.body["reason"]
        body["definition"]["ha-params"] = "y" * 100_000
        reply = api.put("/api/policies/%2F/huge", body)
        assert reply.status == 400 and "at most 65536" in reply.body["reason"]
        nested: object = 1
        for _ in range(6):
            nested = {"k": nested}
        body["definition"]["ha-params"] = nested
        assert api.put("/api/policies/%2F/kept", body).status == 201
    finally:
        broker.kill()
    broker, api = start(tmp_path / "data")
    try:
        assert api.get("/api/policies/%2F/kept").body["definition"]["ha-params"] == nested
    finally:
        broker.stop()


def test_requests_of_other_sites_and_oversized_ones_are_refused(tmp_path: Path) -> None:
    """A page of another site cannot post to the API (Origin), a definitions upload must be
    JSON (RabbitMQ's 415: a form cannot send it), a body larger than its kind needs is 413
    before it is parsed, and a name longer than AMQP allows is 400."""
    broker, api = start(tmp_path / "data")
    try:
        evil = {"users": [{"name": "evil", "password": "x", "tags": "administrator"}]}
        reply = api.post("/api/definitions", evil, headers={"Origin": "https://evil.example"})
        assert reply.status == 403
        raw = json.dumps(evil).encode()
        reply = api.request(
            "POST", "/api/definitions", raw=raw, headers={"Content-Type": "text/plain"}
        )
        assert reply.status == 415
        assert api.get("/api/users/evil").status == 404
        same_site = {"Origin": f"http://127.0.0.1:{api.port}"}
        assert api.get("/api/overview", headers=same_site).status == 200
        reply = api.request("PUT", "/api/queues/%2F/big", raw=b"[" + b"{}," * 400_000 + b"{}]")
        assert reply.status == 413
        reply = api.put("/api/queues/%2F/" + "q" * 300, {})
        assert reply.body["reason"] == "queue should be less than 255 bytes, actually was 300\n"
    finally:
        broker.stop()


def test_a_get_stops_before_its_answer_grows_huge(tmp_path: Path) -> None:
    """Messages with large headers and empty bodies: count=10000 with truncate=0 would answer
    with every header decoded; the get stops at its byte budget and requeues nothing it did
    not return."""
    broker, api = start(tmp_path / "data")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("wide")
        properties = pika.BasicProperties(headers={"blob": "é" * 50_000})
        for _ in range(250):
            channel.basic_publish("", "wide", b"", properties)
        body = {"count": 10000, "ackmode": "ack_requeue_false", "encoding": "auto", "truncate": 0}
        reply = api.post("/api/queues/%2F/wide/get", body)
        assert reply.status == 200
        returned = len(reply.body)
        assert 1 <= returned < 250
        left = channel.queue_declare("wide", passive=True).method.message_count
        assert returned + left == 250
        connection.close()
    finally:
        broker.stop()


def test_an_import_logs_its_changes_once(tmp_path: Path) -> None:
    """300 users in one import: one RUNTIME record for all of them (each record holds the whole
    document, so one per user would write hundreds of times as much); a bad permission regex
    stops the import with 400 naming the entry."""
    broker, api = start(tmp_path / "data")
    try:
        before = sum(f.stat().st_size for f in (tmp_path / "data" / "wal").glob("*.wal"))
        users = [{"name": f"u{n}", "password": "pw", "tags": ""} for n in range(300)]
        assert api.post("/api/definitions", {"users": users}).status == 204
        after = sum(f.stat().st_size for f in (tmp_path / "data" / "wal").glob("*.wal"))
        assert after - before < 200_000, after - before
        assert len(api.get("/api/users").body) == 301
        bad = {"permissions": [{"user": "u1", "vhost": "/", "configure": "(", "write": ".*",
                                "read": ".*"}]}  # fmt: skip
        reply = api.post("/api/definitions", bad)
        assert reply.status == 400 and "permissions[0]" in reply.body["reason"]
        assert api.get("/api/permissions/%2F/u1").status == 404
    finally:
        broker.stop()


def test_an_import_that_stops_half_way_keeps_what_it_applied_through_kill_9(
    tmp_path: Path,
) -> None:
    """An import refused at an entry keeps the entries before it (as RabbitMQ does), and their
    one RUNTIME record is on disk before the 400: a kill -9 right after loses none of it."""
    broker, api = start(tmp_path / "data")
    try:
        document = {
            "users": [{"name": "kept", "password": "pw", "tags": "management"}],
            "permissions": [
                {"user": "kept", "vhost": "/", "configure": "(", "write": "", "read": ""}
            ],
        }
        reply = api.post("/api/definitions", document)
        assert reply.status == 400 and "permissions[0]" in reply.body["reason"]
    finally:
        broker.kill()
    broker, api = start(tmp_path / "data")
    try:
        assert api.as_user("kept", "pw").get("/api/whoami").body["name"] == "kept"
        assert api.get("/api/permissions/%2F/kept").status == 404
    finally:
        broker.stop()


def test_a_vhost_the_log_refuses_is_not_created(tmp_path: Path) -> None:
    """add_vhost logs before it answers; when the log refuses, the vhost does not exist and an
    existing one keeps its description."""
    from broker.config import load_config
    from broker.core.persistence import LogUnavailable
    from broker.server import Broker

    config = load_config().with_overrides(port=0, metrics_port=0, management_port=0)
    broker = Broker(config)
    broker.add_vhost("kept", "before")

    def refuse() -> None:
        raise LogUnavailable("runtime definitions", OSError("disk gone"))

    broker._runtime_changed = refuse  # type: ignore[method-assign]
    with pytest.raises(LogUnavailable):
        broker.add_vhost("new")
    with pytest.raises(LogUnavailable):
        broker.add_vhost("kept", "after")
    assert "new" not in broker.vhosts and "new" not in broker.vhost_metadata
    assert broker.vhost_metadata["kept"]["description"] == "before"
