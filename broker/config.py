"""Broker configuration: YAML in, frozen dataclasses out, validated once at start.

Every problem is reported with the key path and what to change ("limits.frame_max: must be an
integer between 4096 and 1048576, got 'big'"), and the broker refuses to start rather than run
with a half-understood file. Environment variables override keys: WARREN_LIMITS__FRAME_MAX=65536
sets limits.frame_max (the value is read as YAML, so lists and mappings work too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from broker.core.read_ahead import DEFAULT_READ_AHEAD_BYTES
from broker.patterns import BoundedPattern, PatternError
from broker.store.wal import SYNC_POLICIES

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "broker.yaml"
ENV_PREFIX = "WARREN_"


class ConfigError(ValueError):
    """A config file problem; the message names the key path and what is wrong."""


@dataclass(frozen=True)
class Listener:
    host: str = "127.0.0.1"
    port: int = 5672


@dataclass(frozen=True)
class TlsListener(Listener):
    """amqps: the same protocol inside TLS (ssl module); cafile enables client certificates."""

    port: int = 5671
    certfile: Path = Path()
    keyfile: Path = Path()
    cafile: Path | None = None
    verify_peer: bool = False


@dataclass(frozen=True)
class HttpListener:
    """The management API and web console's listener: loopback unless an operator exposes it;
    HTTPS when certfile and keyfile are set."""

    host: str = "127.0.0.1"
    port: int = 15672  # 0 disables the management API and console
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    verify_peer: bool = False


@dataclass(frozen=True)
class ManagementConfig:
    listener: HttpListener = field(default_factory=HttpListener)


@dataclass(frozen=True)
class Permission:
    """RabbitMQ's per-vhost permissions: regexes over resource names (searched, not anchored;
    an empty pattern matches nothing)."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"


@dataclass(frozen=True)
class UserConfig:
    name: str
    password_hash: str
    permissions: Mapping[str, Permission] = field(default_factory=dict)  # vhost -> permission
    loopback_only: bool = False
    tags: tuple[str, ...] = ()  # RabbitMQ's: administrator, monitoring, policymaker, management


@dataclass(frozen=True)
class Limits:
    max_connections: int = 0  # 0: unlimited
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    max_message_size: int = 128 * 1024 * 1024
    # Above this memory use, publishing connections are blocked (connection.blocked). A value
    # up to 1 is a fraction of the machine's (or container's) memory, above 1 a number of bytes.
    memory_high_watermark: float = 0.4
    # Above this fraction of the high watermark, queues that page write the transient messages
    # past their window to disk (RabbitMQ's vm_memory_high_watermark_paging_ratio); 1 or more:
    # never (the alarm comes first).
    memory_paging_ratio: float = 0.5
    # What queues that page may hold read back from disk ahead of their consumers, all
    # together (bodies and the objects they make); past it they wait their turn, except that a
    # queue whose consumers found nothing ready still reads a little.
    read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES
    # A delivery not acknowledged within this many milliseconds closes its channel with 406
    # and requeues what it held (RabbitMQ's consumer_timeout); 0 disables. Queues can set their
    # own with x-consumer-timeout. Checked every consumer_timeout_check seconds.
    consumer_timeout: int = 1_800_000
    consumer_timeout_check: float = 1.0


@dataclass(frozen=True)
class StoreConfig:
    """The write-ahead log. `sync: always` fsyncs before every confirm (group commit);
    `periodic` confirms after the write and fsyncs every `sync_interval` seconds, so a machine
    crash (not a broker crash) can lose the confirmed messages of the last interval."""

    segment_size: int = 64 * 1024 * 1024
    sync: str = "always"
    sync_interval: float = 0.2


@dataclass(frozen=True)
class BrokerConfig:
    listener: Listener = field(default_factory=Listener)
    tls_listener: TlsListener | None = None
    users: tuple[UserConfig, ...] = ()
    vhosts: tuple[str, ...] = ("/",)
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    data_dir: Path | None = Path("data")  # None: nothing is written, nothing survives a restart
    metrics_port: int = 15692  # 0 disables the Prometheus endpoint
    management: ManagementConfig = field(default_factory=ManagementConfig)
    load_definitions: Path | None = None  # RabbitMQ definitions (JSON) imported at every boot
    log_level: str = "info"
    cluster_name: str = "warren"

    def with_overrides(self, **changes: Any) -> BrokerConfig:
        """Command-line overrides (host, port, data dir, metrics port); None leaves a value."""
        listener = self.listener
        if changes.get("port") is not None:
            listener = replace(listener, port=_port(changes["port"], "--port"))
        if changes.get("host") is not None:
            listener = replace(listener, host=changes["host"])
        result = replace(self, listener=listener)
        if changes.get("data_dir") is not None:
            result = replace(result, data_dir=Path(changes["data_dir"]))
        if changes.get("metrics_port") is not None:
            result = replace(result, metrics_port=_port(changes["metrics_port"], "--metrics-port"))
        if changes.get("management_port") is not None:
            port = _port(changes["management_port"], "--management-port")
            http = replace(self.management.listener, port=port)
            result = replace(result, management=ManagementConfig(http))
        return result


LOG_LEVELS = ("debug", "info", "warning", "error")


# --------------------------------------------------------------------------- value checks
def _port(value: Any, path: str) -> int:
    return _integer(value, path, 0, 65535)


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{path}: must be an integer between {low} and {high}, got {value!r}")
    return value


def _number(value: Any, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{path}: must be a number between {low} and {high}, got {value!r}")
    return float(value)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be a non-empty string, got {value!r}")
    return value


def _mapping(value: Any, path: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
    """A mapping whose keys are all in `allowed` (any keys when None)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        where = path or "the top level"
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    for key in value:
        if allowed is not None and key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key; expected one of {', '.join(allowed)}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, got {value!r}")
    return value


def _readable_file(value: Any, path: str, base_dir: Path) -> Path:
    file = Path(_string(value, path))
    file = file if file.is_absolute() else base_dir / file
    if not file.is_file() or not os.access(file, os.R_OK):
        raise ConfigError(f"{path}: {file} is not a readable file")
    return file


def _regex(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: must be a regular expression string, got {value!r}")
    try:
        BoundedPattern(value)  # the syntax permissions are matched with
    except PatternError as error:
        raise ConfigError(f"{path}: not a valid regular expression: {error}") from error
    return value


# --------------------------------------------------------------------------- sections
def _parse_listeners(raw: Any, base_dir: Path) -> tuple[Listener, TlsListener | None]:
    data = _mapping(raw, "listeners", ("amqp", "amqps"))
    plain = _mapping(data.get("amqp"), "listeners.amqp", ("host", "port"))
    listener = Listener(
        host=_string(plain.get("host", Listener.host), "listeners.amqp.host"),
        port=_port(plain.get("port", Listener.port), "listeners.amqp.port"),
    )
    if data.get("amqps") is None:
        return listener, None
    path = "listeners.amqps"
    tls = _mapping(
        data["amqps"], path, ("host", "port", "certfile", "keyfile", "cafile", "verify_peer")
    )
    for required in ("certfile", "keyfile"):
        if required not in tls:
            raise ConfigError(f"{path}.{required}: required for a TLS listener (a PEM file)")
    cafile = tls.get("cafile")
    verify_peer = _bool(tls.get("verify_peer", False), f"{path}.verify_peer")
    if verify_peer and cafile is None:
        raise ConfigError(f"{path}.cafile: verify_peer needs the CA that signs client certificates")
    return listener, TlsListener(
        host=_string(tls.get("host", listener.host), f"{path}.host"),
        port=_port(tls.get("port", TlsListener.port), f"{path}.port"),
        certfile=_readable_file(tls["certfile"], f"{path}.certfile", base_dir),
        keyfile=_readable_file(tls["keyfile"], f"{path}.keyfile", base_dir),
        cafile=None if cafile is None else _readable_file(cafile, f"{path}.cafile", base_dir),
        verify_peer=verify_peer,
    )


def _parse_management(raw: Any, base_dir: Path) -> ManagementConfig:
    data = _mapping(raw, "management", ("listener",))
    path = "management.listener"
    keys = ("host", "port", "certfile", "keyfile", "cafile", "verify_peer")
    values = _mapping(data.get("listener"), path, keys)
    files = {
        key: None
        if values.get(key) is None
        else _readable_file(values[key], f"{path}.{key}", base_dir)
        for key in ("certfile", "keyfile", "cafile")
    }
    if (files["certfile"] is None) != (files["keyfile"] is None):
        raise ConfigError(f"{path}: HTTPS needs both certfile and keyfile (PEM files)")
    verify_peer = _bool(values.get("verify_peer", False), f"{path}.verify_peer")
    if verify_peer and files["cafile"] is None:
        raise ConfigError(f"{path}.cafile: verify_peer needs the CA that signs client certificates")
    return ManagementConfig(
        HttpListener(
            host=_string(values.get("host", HttpListener.host), f"{path}.host"),
            port=_port(values.get("port", HttpListener.port), f"{path}.port"),
            verify_peer=verify_peer,
            **files,
        )
    )


def _parse_permissions(raw: Any, path: str, vhosts: tuple[str, ...]) -> dict[str, Permission]:
    """Only the vhosts listed; omitted, none at all: as in RabbitMQ, a user can open no vhost
    until permissions are set for it (Connection.Open is refused with 530)."""
    data = _mapping(raw, path, None)
    permissions = {}
    for vhost, entry in data.items():
        where = f"{path}.{vhost}"
        if vhost not in vhosts:
            raise ConfigError(f"{where}: vhost '{vhost}' is not in vhosts")
        values = _mapping(entry, where, ("configure", "write", "read"))
        permissions[vhost] = Permission(
            **{
                kind: _regex(values.get(kind, ".*"), f"{where}.{kind}")
                for kind in ("configure", "write", "read")
            }
        )
    return permissions


def _parse_users(raw: Any, vhosts: tuple[str, ...]) -> tuple[UserConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("users: must be a non-empty list of users")
    users = []
    for index, item in enumerate(raw):
        path = f"users[{index}]"
        if isinstance(item, dict) and "password" in item:
            raise ConfigError(
                f"{path}.password: plain-text passwords are not accepted;"
                " put the output of `warren hash-password` in password_hash"
            )
        data = _mapping(
            item, path, ("name", "password_hash", "permissions", "loopback_only", "tags")
        )
        name = _string(data.get("name"), f"{path}.name")
        password_hash = _string(data.get("password_hash"), f"{path}.password_hash")
        if len(password_hash) != 48:
            raise ConfigError(
                f"{path}.password_hash: not a Warren/RabbitMQ SHA-256 hash;"
                " make one with `warren hash-password`"
            )
        users.append(
            UserConfig(
                name=name,
                password_hash=password_hash,
                permissions=_parse_permissions(
                    data.get("permissions"), f"{path}.permissions", vhosts
                ),
                loopback_only=_bool(data.get("loopback_only", False), f"{path}.loopback_only"),
                tags=_tags(data.get("tags", []), f"{path}.tags"),
            )
        )
    return tuple(users)


def parse_tags(value: Any) -> tuple[str, ...] | None:
    """Tags as RabbitMQ takes them: a comma-separated string or a list of strings (None for
    anything else, for the caller to refuse in its own words)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(tag, str) for tag in value):
        return None
    return tuple(tag.strip() for tag in value if tag.strip())


def _tags(value: Any, path: str) -> tuple[str, ...]:
    tags = parse_tags(value)
    if tags is None:
        raise ConfigError(f"{path}: must be a list of tags such as [administrator]")
    return tags


def _parse_limits(raw: Any) -> Limits:
    names = tuple(Limits.__dataclass_fields__)
    data = _mapping(raw, "limits", names)
    d = Limits()

    def get(name: str) -> Any:
        return data.get(name, getattr(d, name))

    return Limits(
        max_connections=_integer(get("max_connections"), "limits.max_connections", 0, 1 << 20),
        channel_max=_integer(get("channel_max"), "limits.channel_max", 1, 65535),
        frame_max=_integer(get("frame_max"), "limits.frame_max", 4096, 1 << 20),
        heartbeat=_integer(get("heartbeat"), "limits.heartbeat", 0, 65535),
        handshake_timeout=_number(get("handshake_timeout"), "limits.handshake_timeout", 0.1, 3600),
        max_message_size=_integer(
            get("max_message_size"), "limits.max_message_size", 1, 512 * 1024 * 1024
        ),
        memory_high_watermark=_watermark(get("memory_high_watermark")),
        memory_paging_ratio=_number(
            get("memory_paging_ratio"), "limits.memory_paging_ratio", 0.0, 1.0
        ),
        read_ahead_bytes=_integer(
            get("read_ahead_bytes"), "limits.read_ahead_bytes", 1 << 20, 1 << 40
        ),
        consumer_timeout=_integer(
            get("consumer_timeout"), "limits.consumer_timeout", 0, 315_360_000_000
        ),
        consumer_timeout_check=_number(
            get("consumer_timeout_check"), "limits.consumer_timeout_check", 0.05, 3600
        ),
    )


def _watermark(value: Any) -> float:
    """A fraction of memory (0.01..1) or a number of bytes (at least 1 MiB): nothing between,
    where 1.5 would silently mean one and a half bytes."""
    path = "limits.memory_high_watermark"
    number = _number(value, path, 0.01, 1 << 50)
    if 1 < number < 1 << 20:
        raise ConfigError(
            f"{path}: {value!r} is neither a fraction of memory (0.01 to 1) nor a size in bytes"
            " (at least 1048576)"
        )
    return number


def _parse_store(raw: Any) -> StoreConfig:
    data = _mapping(raw, "store", ("segment_size", "sync", "sync_interval"))
    d = StoreConfig()
    sync = data.get("sync", d.sync)
    if sync not in SYNC_POLICIES:
        raise ConfigError(f"store.sync: must be one of {', '.join(SYNC_POLICIES)}, got {sync!r}")
    return StoreConfig(
        segment_size=_integer(
            data.get("segment_size", d.segment_size), "store.segment_size", 1 << 16, 1 << 34
        ),
        sync=sync,
        sync_interval=_number(
            data.get("sync_interval", d.sync_interval), "store.sync_interval", 0.001, 60
        ),
    )


TOP_LEVEL_KEYS = (
    "listeners",
    "users",
    "vhosts",
    "limits",
    "store",
    "data_dir",
    "metrics_port",
    "management",
    "load_definitions",
    "log_level",
    "cluster_name",
)


def parse_config(raw: Any, base_dir: Path) -> BrokerConfig:
    """Validate a parsed YAML document; relative paths are relative to `base_dir`."""
    if isinstance(raw, dict) and "admin_port" in raw:
        raise ConfigError("admin_port: renamed; set management.listener.port instead")
    data = _mapping(raw, "", TOP_LEVEL_KEYS)
    vhosts = data.get("vhosts", ["/"])
    if not isinstance(vhosts, list) or not vhosts or not all(isinstance(v, str) for v in vhosts):
        raise ConfigError("vhosts: must be a non-empty list of vhost names")
    log_level = str(data.get("log_level", "info")).lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    raw_dir = data.get("data_dir", "data")
    data_dir = None if raw_dir is None else Path(_string(raw_dir, "data_dir"))
    if data_dir is not None and not data_dir.is_absolute():
        data_dir = base_dir / data_dir
    listener, tls_listener = _parse_listeners(data.get("listeners"), base_dir)
    metrics_port = _port(data.get("metrics_port", 15692), "metrics_port")
    management = _parse_management(data.get("management"), base_dir)
    _check_ports_distinct(
        {
            "listeners.amqp.port": listener.port,
            "listeners.amqps.port": tls_listener.port if tls_listener else 0,
            "metrics_port": metrics_port,
            "management.listener.port": management.listener.port,
        }
    )
    raw_definitions = data.get("load_definitions")
    definitions = (
        None
        if raw_definitions is None
        else _readable_file(raw_definitions, "load_definitions", base_dir)
    )
    users = _parse_users(data.get("users"), tuple(vhosts))
    names = [user.name for user in users]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"users: '{name}' is listed more than once")
    return BrokerConfig(
        listener=listener,
        tls_listener=tls_listener,
        users=users,
        vhosts=tuple(vhosts),
        limits=_parse_limits(data.get("limits")),
        store=_parse_store(data.get("store")),
        data_dir=data_dir,
        metrics_port=metrics_port,
        management=management,
        load_definitions=definitions,
        log_level=log_level,
        cluster_name=_string(data.get("cluster_name", "warren"), "cluster_name"),
    )


def _check_ports_distinct(ports: dict[str, int]) -> None:
    """Two listeners on one port fail only after recovery; say so at once instead."""
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port and port in seen:
            raise ConfigError(f"{key}: port {port} is already used by {seen[port]}")
        seen.setdefault(port, key)


def apply_environment(raw: Any, environ: Mapping[str, str]) -> Any:
    """Overlay WARREN_<KEY>__<SUBKEY>=<yaml value> variables on the parsed file.

    Only variables whose first key is a config section count, so WARREN_CONFIG and unrelated
    WARREN_* variables are left alone.
    """
    data = dict(raw) if isinstance(raw, dict) else raw
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in TOP_LEVEL_KEYS or not all(path):
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: the config file's top level is not a mapping")
        if not text.strip():
            # An unset compose variable must not silently mean "null" (for data_dir: no
            # durability at all); set the key in the file to turn something off.
            raise ConfigError(f"{name}: empty value; unset the variable to keep the file's value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{name}: not a valid YAML value: {error}") from error
        target = data
        for depth, key in enumerate(path[:-1]):
            child = target.get(key)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"{name}: {where} is not a mapping, so it has no sub-keys")
            target[key] = child = dict(child)
            target = child
        target[path[-1]] = value
    return data


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> BrokerConfig:
    """Read and validate a config file (the default one when no path is given), then apply
    environment overrides."""
    environ = os.environ if environ is None else environ
    path = path or Path(environ.get("WARREN_CONFIG", DEFAULT_CONFIG_PATH))
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from error
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    try:
        return parse_config(apply_environment(raw, environ), Path.cwd())
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
