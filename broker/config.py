"""Broker configuration: YAML in, frozen dataclasses out, validated once at start.

Every problem is reported with the key path and what to change ("limits.frame_max: must be an
integer between 4096 and 1048576, got 'big'"), and the broker refuses to start rather than run
with a half-understood file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "broker.yaml"


class ConfigError(ValueError):
    """A config file problem; the message names the key path and what is wrong."""


@dataclass(frozen=True)
class Listener:
    host: str = "127.0.0.1"
    port: int = 5672


@dataclass(frozen=True)
class UserConfig:
    name: str
    password_hash: str
    vhosts: tuple[str, ...] = ("/",)
    loopback_only: bool = False


@dataclass(frozen=True)
class Limits:
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    max_message_size: int = 128 * 1024 * 1024


SYNC_POLICIES = ("always", "periodic")


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
    users: tuple[UserConfig, ...] = ()
    vhosts: tuple[str, ...] = ("/",)
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    data_dir: Path | None = Path("data")  # None: nothing is written, nothing survives a restart
    metrics_port: int = 15692
    log_level: str = "info"
    cluster_name: str = "warren"

    def with_overrides(self, **changes: Any) -> BrokerConfig:
        """Command-line overrides (port, data dir, metrics port); None leaves a value alone."""
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
        return result


LOG_LEVELS = ("debug", "info", "warning", "error")


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


def _mapping(value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        where = path or "the top level"
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key; expected one of {', '.join(allowed)}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, got {value!r}")
    return value


def _parse_listener(raw: Any) -> Listener:
    data = _mapping(raw, "listener", ("host", "port"))
    defaults = Listener()
    return Listener(
        host=_string(data.get("host", defaults.host), "listener.host"),
        port=_port(data.get("port", defaults.port), "listener.port"),
    )


def _parse_users(raw: Any) -> tuple[UserConfig, ...]:
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
        data = _mapping(item, path, ("name", "password_hash", "vhosts", "loopback_only"))
        name = _string(data.get("name"), f"{path}.name")
        password_hash = _string(data.get("password_hash"), f"{path}.password_hash")
        if len(password_hash) != 48:
            raise ConfigError(
                f"{path}.password_hash: not a Warren/RabbitMQ SHA-256 hash;"
                " make one with `warren hash-password`"
            )
        vhosts = data.get("vhosts", ["/"])
        if not isinstance(vhosts, list) or not all(isinstance(v, str) for v in vhosts):
            raise ConfigError(f"{path}.vhosts: must be a list of vhost names (or ['*'])")
        users.append(
            UserConfig(
                name=name,
                password_hash=password_hash,
                vhosts=tuple(vhosts),
                loopback_only=_bool(data.get("loopback_only", False), f"{path}.loopback_only"),
            )
        )
    return tuple(users)


def _parse_limits(raw: Any) -> Limits:
    names = ("channel_max", "frame_max", "heartbeat", "handshake_timeout", "max_message_size")
    data = _mapping(raw, "limits", names)
    d = Limits()
    return Limits(
        channel_max=_integer(
            data.get("channel_max", d.channel_max), "limits.channel_max", 1, 65535
        ),
        frame_max=_integer(data.get("frame_max", d.frame_max), "limits.frame_max", 4096, 1 << 20),
        heartbeat=_integer(data.get("heartbeat", d.heartbeat), "limits.heartbeat", 0, 65535),
        handshake_timeout=_number(
            data.get("handshake_timeout", d.handshake_timeout),
            "limits.handshake_timeout",
            0.1,
            3600,
        ),
        max_message_size=_integer(
            data.get("max_message_size", d.max_message_size),
            "limits.max_message_size",
            1,
            512 * 1024 * 1024,
        ),
    )


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
    "listener",
    "users",
    "vhosts",
    "limits",
    "store",
    "data_dir",
    "metrics_port",
    "log_level",
    "cluster_name",
)


def parse_config(raw: Any, base_dir: Path) -> BrokerConfig:
    data = _mapping(raw, "", TOP_LEVEL_KEYS)
    vhosts = data.get("vhosts", ["/"])
    if not isinstance(vhosts, list) or not vhosts or not all(isinstance(v, str) for v in vhosts):
        raise ConfigError("vhosts: must be a non-empty list of vhost names")
    log_level = str(data.get("log_level", "info")).lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    raw_dir = data.get("data_dir", "data")
    data_dir = None if raw_dir is None else Path(_string(str(raw_dir), "data_dir"))
    if data_dir is not None and not data_dir.is_absolute():
        data_dir = base_dir / data_dir
    users = _parse_users(data.get("users"))
    for user in users:
        for vhost in user.vhosts:
            if vhost != "*" and vhost not in vhosts:
                raise ConfigError(
                    f"users: user '{user.name}' is given vhost '{vhost}', which is not in vhosts"
                )
    return BrokerConfig(
        listener=_parse_listener(data.get("listener")),
        users=users,
        vhosts=tuple(vhosts),
        limits=_parse_limits(data.get("limits")),
        store=_parse_store(data.get("store")),
        data_dir=data_dir,
        metrics_port=_port(data.get("metrics_port", 15692), "metrics_port"),
        log_level=log_level,
        cluster_name=_string(data.get("cluster_name", "warren"), "cluster_name"),
    )


def load_config(path: Path | None = None) -> BrokerConfig:
    """Read and validate a config file (the default one when no path is given)."""
    path = path or Path(os.environ.get("WARREN_CONFIG", DEFAULT_CONFIG_PATH))
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from error
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    try:
        return parse_config(raw, Path.cwd())
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
