"""RabbitMQ's definitions format: export the broker's users, vhosts, permissions, policies,
queues, exchanges and bindings as one JSON document, and import one.

The same code serves `GET/POST /api/definitions` and `load_definitions` at boot, so an export
taken from RabbitMQ (`rabbitmqadmin export`, the management UI's download) moves to Warren as is.
An import checks the whole document's shape first and refuses it, changing nothing, when an
entry is malformed; then it applies the entries in RabbitMQ's order (users, vhosts,
permissions, policies, exchanges, queues, bindings), each through the same model call a client
or the API uses. An entry the model refuses (an inequivalent redeclare, say) stops the import
there with an error that names it; what came before it stays, as in RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.auth import User, hash_password
from broker.config import Permission, parse_tags
from broker.core.errors import AMQPError
from broker.core.exchange import Exchange
from broker.core.queue import Queue
from broker.core.vhost import BUILTIN_EXCHANGES
from broker.patterns import BoundedPattern
from broker.policies import PolicyError, parse_policy

if TYPE_CHECKING:
    from broker.management.context import ManagedBroker

RABBITMQ_VERSION = "3.10.8"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


class DefinitionsError(ValueError):
    """The document cannot be imported; the message names the entry and what is wrong, and
    `reason` is how RabbitMQ's API words it (text, or a list such as
    ["no_such_vhost", "v"])."""

    def __init__(self, message: str, reason: Any = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


def export(broker: ManagedBroker, vhost: str | None = None) -> dict[str, Any]:
    """Everything, or (with `vhost`) one vhost's policies, queues, exchanges and bindings
    without vhost fields, as RabbitMQ's per-vhost export."""
    head = {
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": _version(),
    }
    names = [vhost] if vhost is not None else sorted(broker.vhosts)
    queues, exchanges, bindings = [], [], []
    for name in names:
        model = broker.vhosts[name]
        queues += [_queue(queue) for queue in _exported_queues(model.queues.values())]
        exchanges += [
            exchange_definition(name, exchange)
            for exchange in sorted(model.exchanges.values(), key=lambda e: e.name)
            if exchange.name not in BUILTIN_EXCHANGES
        ]
        bindings += [
            _binding(name, exchange.name, binding)
            for exchange in sorted(model.exchanges.values(), key=lambda e: e.name)
            if exchange.name
            for binding in exchange.bindings.values()
        ]
    policies = [p.row() for p in broker.policies.all() if p.vhost in names]
    if vhost is not None:
        for entry in (*queues, *exchanges, *bindings):  # policies keep theirs, as RabbitMQ's
            entry.pop("vhost", None)
        return {**head, "parameters": [], "policies": policies, "queues": queues,
                "exchanges": exchanges, "bindings": bindings}  # fmt: skip
    users = sorted(broker.auth.users.values(), key=lambda u: u.name)
    return {
        **head,
        "users": [
            {
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": list(u.tags),
                "limits": {},
            }
            for u in users
        ],
        "vhosts": [_vhost(broker, name) for name in names],
        "permissions": [
            {"user": u.name, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}
            for u in users
            for v, p in sorted(u.permissions.items())
        ],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [{"name": "cluster_name", "value": broker.config.cluster_name}],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def _version() -> str:
    from broker import __version__

    return __version__


def _exported_queues(queues: Any) -> list[Queue]:
    """Queues a definitions file can recreate: not exclusive (they belong to a connection)."""
    return sorted((q for q in queues if q.exclusive_owner is None), key=lambda q: q.name)


def _vhost(broker: ManagedBroker, name: str) -> dict[str, Any]:
    meta = broker.vhost_metadata.get(name, {})
    description, tags = meta.get("description", ""), list(meta.get("tags", ()))
    return {"name": name, "limits": [], "metadata": {"description": description, "tags": tags}}


def _queue(queue: Queue) -> dict[str, Any]:
    return {
        "name": queue.name,
        "vhost": queue.vhost_name,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "arguments": queue.arguments,
    }


def exchange_definition(vhost: str, exchange: Exchange) -> dict[str, Any]:
    """An exchange as a definitions file (and, with more, the API's listing) holds it."""
    return {
        "name": exchange.name,
        "vhost": vhost,
        "type": exchange.type_name,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": exchange.arguments,
    }


def _binding(vhost: str, source: str, binding: Any) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": binding.destination.name,
        "destination_type": "queue" if isinstance(binding.destination, Queue) else "exchange",
        "routing_key": binding.routing_key,
        "arguments": binding.arguments,
    }


# ------------------------------------------------------------------------------------ import
def import_definitions(
    broker: ManagedBroker, document: Any, vhost: str | None = None, acting_user: str = ""
) -> dict[str, int]:
    """Apply a definitions document; returns how many entries of each section were applied.
    With `vhost`, entries without a vhost field go to that vhost (a per-vhost export). A vhost
    the import creates is open to `acting_user` (the API's caller), as one created with PUT."""
    if not isinstance(document, dict):
        raise DefinitionsError("definitions must be a JSON object")
    sections = {}
    for section in SECTIONS:
        entries = document.get(section, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise DefinitionsError(f"{section} must be a list of objects")
        sections[section] = entries
    declared = {v.get("name") for v in sections["vhosts"]}
    for section in ("queues", "exchanges", "bindings", "policies", "permissions"):
        for index, entry in enumerate(sections[section]):
            if vhost is not None:
                entry.setdefault("vhost", vhost)
            name = entry.get("vhost")
            if not isinstance(name, str) or (name not in broker.vhosts and name not in declared):
                shown = name if isinstance(name, str) else "undefined"
                raise DefinitionsError(
                    f"{section}[{index}]: no vhost '{shown}'", ["no_such_vhost", shown]
                )
    for index, entry in enumerate(sections["users"]):
        if not isinstance(entry.get("name"), str):
            raise DefinitionsError(f"users[{index}]: name is missing")
    with broker.runtime_batch():
        return _apply(broker, sections, acting_user)


def _apply(
    broker: ManagedBroker, sections: dict[str, list[dict[str, Any]]], acting_user: str
) -> dict[str, int]:
    applied: dict[str, int] = {}
    for section in SECTIONS:
        apply = _APPLY[section]
        for index, entry in enumerate(sections[section]):
            try:
                if section == "vhosts":
                    _vhost_entry(broker, entry, acting_user)
                else:
                    apply(broker, entry)
            except (
                AMQPError, PolicyError, KeyError, TypeError, ValueError, AttributeError
            ) as error:  # fmt: skip
                reason = error.text if isinstance(error, AMQPError) else str(error)
                raise DefinitionsError(f"{section}[{index}] ({_label(entry)}): {reason}") from None
        applied[section] = len(sections[section])
    return applied


def _label(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("user") or entry.get("source") or "?")


def _flag(entry: dict[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _user(broker: ManagedBroker, entry: dict[str, Any]) -> None:
    algorithm = entry.get("hashing_algorithm", HASHING_ALGORITHM)
    if algorithm != HASHING_ALGORITHM:
        raise ValueError(f"hashing_algorithm {algorithm!r} is not supported (only SHA-256)")
    if isinstance(entry.get("password"), str):  # RabbitMQ takes a plain password here too
        password_hash = hash_password(entry["password"])
    else:
        password_hash = entry.get("password_hash", "")
    if not isinstance(password_hash, str) or (password_hash and len(password_hash) != 48):
        raise ValueError("password_hash is not a rabbit_password_hashing_sha256 hash")
    tags = parse_tags(entry.get("tags", []))
    if tags is None:
        raise ValueError("tags must be a comma-separated string or a list of strings")
    existing = broker.auth.users.get(entry["name"])
    broker.auth.put_user(
        User(
            entry["name"],
            password_hash,
            existing.permissions if existing else {},
            existing.loopback_only if existing else False,
            tags,
        )
    )


def _vhost_entry(broker: ManagedBroker, entry: dict[str, Any], acting_user: str = "") -> None:
    metadata = entry.get("metadata") or {}
    if not isinstance(metadata, dict) or not isinstance(entry["name"], str):
        raise ValueError("a vhost needs a string name and an object metadata")
    description = metadata.get("description", entry.get("description", ""))
    tags = parse_tags(metadata.get("tags", entry.get("tags", [])) or [])
    if tags is None:
        raise ValueError("tags must be a comma-separated string or a list of strings")
    created = broker.add_vhost(entry["name"], str(description or ""), tags)
    if created and acting_user in broker.auth.users:
        broker.auth.set_permission(acting_user, entry["name"], Permission())


def _permission(broker: ManagedBroker, entry: dict[str, Any]) -> None:
    if entry["vhost"] not in broker.vhosts:
        raise ValueError(f"no vhost '{entry['vhost']}'")
    if entry["user"] not in broker.auth.users:
        raise ValueError(f"no user '{entry['user']}'")
    patterns = [str(entry[kind]) for kind in ("configure", "write", "read")]
    for pattern in patterns:
        BoundedPattern(pattern)  # PatternError (a ValueError) names what is wrong
    permission = Permission(*patterns)
    broker.auth.set_permission(entry["user"], entry["vhost"], permission)


def _policy(broker: ManagedBroker, entry: dict[str, Any]) -> None:
    if entry["vhost"] not in broker.vhosts:
        raise ValueError(f"no vhost '{entry['vhost']}'")
    broker.policies.put(parse_policy(entry["vhost"], str(entry["name"]), entry))


def _model_vhost(broker: ManagedBroker, entry: dict[str, Any]) -> Any:
    vhost = broker.vhosts.get(entry["vhost"])
    if vhost is None:
        raise ValueError(f"no vhost '{entry['vhost']}'")
    return vhost


def _queue_entry(broker: ManagedBroker, entry: dict[str, Any]) -> None:
    _model_vhost(broker, entry).declare_queue(
        entry["name"],
        None,
        durable=_flag(entry, "durable", True),
        auto_delete=_flag(entry, "auto_delete", False),
        arguments=entry.get("arguments") or {},
    )


def _exchange_entry(broker: ManagedBroker, entry: dict[str, Any]) -> None:
    _model_vhost(broker, entry).declare_exchange(
        entry["name"],
        entry["type"],
        durable=_flag(entry, "durable", True),
        auto_delete=_flag(entry, "auto_delete", False),
        internal=_flag(entry, "internal", False),
        arguments=entry.get("arguments") or {},
    )


def _binding_entry(broker: ManagedBroker, entry: dict[str, Any]) -> None:
    kind = entry.get("destination_type", "queue")
    if kind not in ("queue", "exchange"):
        raise ValueError("destination_type must be queue or exchange")
    _model_vhost(broker, entry).bind(
        entry["source"],
        entry["destination"],
        str(entry.get("routing_key", "")),
        entry.get("arguments") or {},
        to_exchange=kind == "exchange",
    )


_APPLY: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "users": _user,
    "vhosts": _vhost_entry,
    "permissions": _permission,
    "policies": _policy,
    "exchanges": _exchange_entry,
    "queues": _queue_entry,
    "bindings": _binding_entry,
}
SECTIONS = ("users", "vhosts", "permissions", "policies", "exchanges", "queues", "bindings")
