"""Config loading: the shipped file works, and every bad file is a ConfigError naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broker.auth import check_password
from broker.config import (
    DEFAULT_CONFIG_PATH,
    BrokerConfig,
    ConfigError,
    HttpListener,
    Limits,
    Listener,
    Permission,
    load_config,
)

GOOD_HASH = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"  # 'test12'
MINIMAL = f"""
users:
  - name: app
    password_hash: "{GOOD_HASH}"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    """Load text as a config file, expect ConfigError, return its message."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


# ------------------------------------------------------------------------------------ good files


def test_shipped_config_loads() -> None:
    """config/broker.yaml loads to the documented defaults, with a working guest hash."""
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.listener == Listener("127.0.0.1", 5672)
    assert config.vhosts == ("/",)
    assert config.limits == Limits()
    assert config.tls_listener is None
    assert config.management.listener == HttpListener("127.0.0.1", 15672)
    assert config.load_definitions is None
    assert config.users[0].tags == ("administrator",)
    assert config.metrics_port == 15692
    assert config.log_level == "info"
    assert config.cluster_name == "warren"
    assert config.data_dir.is_absolute()
    assert config.data_dir.name == "data"
    (guest,) = config.users
    assert (guest.name, guest.loopback_only) == ("guest", True)
    assert guest.permissions == {"/": Permission(".*", ".*", ".*")}
    assert check_password("guest", guest.password_hash)


def test_default_path_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path, WARREN_CONFIG names the file, else the shipped one is used."""
    monkeypatch.delenv("WARREN_CONFIG", raising=False)
    assert load_config().users[0].name == "guest"
    monkeypatch.setenv("WARREN_CONFIG", str(_write(tmp_path, MINIMAL)))
    assert load_config().users[0].name == "app"


def test_minimal_config_defaults(tmp_path: Path) -> None:
    """Only users is required; everything else takes the dataclass defaults. A user without
    permissions gets none, as in RabbitMQ."""
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.listener == Listener()
    assert config.limits == Limits()
    assert config.vhosts == ("/",)
    (user,) = config.users
    assert (user.permissions, user.loopback_only) == ({}, False)


@pytest.mark.parametrize("permissions", ["", "    permissions: {}\n", "    permissions:\n"])
def test_user_without_permissions_may_open_no_vhost(tmp_path: Path, permissions: str) -> None:
    """Permissions omitted, empty or null grant nothing in any vhost (RabbitMQ grants nothing
    until set_permissions); only the vhosts listed are granted."""
    text = (
        "vhosts: ['/', prod]\n"
        f"users:\n  - name: app\n    password_hash: '{GOOD_HASH}'\n{permissions}"
        f"  - name: ops\n    password_hash: '{GOOD_HASH}'\n    permissions: {{prod: {{}}}}\n"
    )
    app, ops = load_config(_write(tmp_path, text)).users
    assert app.permissions == {}
    assert ops.permissions == {"prod": Permission()}


def test_absolute_data_dir_kept(tmp_path: Path) -> None:
    """An absolute data_dir is used as given."""
    config = load_config(_write(tmp_path, MINIMAL + f"data_dir: {tmp_path / 'state'}\n"))
    assert config.data_dir == tmp_path / "state"


def test_config_is_frozen(tmp_path: Path) -> None:
    """The parsed config cannot be changed in place."""
    config = load_config(_write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.metrics_port = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("limits:\n  frame_max: big\n", "limits.frame_max: must be an integer between 4096"),
        ("limits:\n  frame_max: 1000\n", "limits.frame_max: must be an integer"),
        ("limits:\n  frame_max: true\n", "limits.frame_max: must be an integer"),
        ("limits:\n  channel_max: 0\n", "limits.channel_max: must be an integer"),
        ("limits:\n  handshake_timeout: 0\n", "limits.handshake_timeout: must be a number"),
        ("limits:\n  heartbeat: -1\n", "limits.heartbeat:"),
        ("limits:\n  max_message_size: 0\n", "limits.max_message_size:"),
        ("limits:\n  consumer_timeout: -1\n", "limits.consumer_timeout: must be an integer"),
        ("limits:\n  consumer_timeout_check: 0\n", "limits.consumer_timeout_check: must be"),
        ("limits:\n  read_ahead_bytes: 65536\n", "limits.read_ahead_bytes: must be an integer"),
        ("limits:\n  memory_paging_ratio: 2\n", "limits.memory_paging_ratio: must be a number"),
        ("limits:\n  frame_mx: 4096\n", "limits.frame_mx: unknown key"),
        ("limits: 5\n", "limits: must be a mapping"),
        (
            "listeners:\n  amqp:\n    port: 70000\n",
            "listeners.amqp.port: must be an integer between 0 and 65535",
        ),
        ("listeners:\n  amqp:\n    host: ''\n", "listeners.amqp.host: must be a non-empty"),
        ("listeners:\n  amqp:\n    hots: x\n", "listeners.amqp.hots: unknown key"),
        ("listeners:\n  amqp2: {}\n", "listeners.amqp2: unknown key; expected one of amqp"),
        ("listner:\n  port: 1\n", "listner: unknown key; expected one of listeners, users"),
        ("listeners:\n  amqps:\n    port: 5671\n", "listeners.amqps.certfile: required"),
        (
            "listeners:\n  amqps:\n    certfile: /nope.pem\n    keyfile: /nope.key\n",
            "listeners.amqps.certfile: /nope.pem is not a readable file",
        ),
        ("limits:\n  memory_high_watermark: 0\n", "limits.memory_high_watermark: must be"),
        ("limits:\n  max_connections: -1\n", "limits.max_connections: must be an integer"),
        ("metrics_port: -1\n", "metrics_port: must be an integer"),
        ("log_level: loud\n", "log_level: must be one of debug, info, warning, error"),
        ("vhosts: []\n", "vhosts: must be a non-empty list"),
        ("vhosts: /\n", "vhosts: must be a non-empty list"),
        ("cluster_name: ''\n", "cluster_name: must be a non-empty string"),
    ],
)
def test_bad_values_name_key_path(tmp_path: Path, extra: str, expected: str) -> None:
    """Each bad value is reported with its dotted key path and what is expected."""
    assert expected in _error(tmp_path, MINIMAL + extra)


@pytest.mark.parametrize(
    ("users", "expected"),
    [
        ("users: []\n", "users: must be a non-empty list of users"),
        ("users: app\n", "users: must be a non-empty list of users"),
        ("users:\n  - name: app\n", "users[0].password_hash: must be a non-empty string"),
        (
            "users:\n  - name: app\n    password_hash: abc\n",
            "users[0].password_hash: not a Warren/RabbitMQ SHA-256 hash",
        ),
        (
            f"users:\n  - name: a\n    password_hash: '{GOOD_HASH}'\n"
            "  - name: b\n    password_hash: short\n",
            "users[1].password_hash:",
        ),
        (f"users:\n  - password_hash: '{GOOD_HASH}'\n", "users[0].name: must be a non-empty"),
        (
            f"users:\n  - name: a\n    password_hash: '{GOOD_HASH}'\n    permissions: /\n",
            "users[0].permissions: must be a mapping",
        ),
        (
            f"users:\n  - name: a\n    password_hash: '{GOOD_HASH}'\n"
            "    permissions: {'/': {read: '('}}\n",
            "users[0].permissions./.read: not a valid regular expression",
        ),
        (
            f"users:\n  - name: a\n    password_hash: '{GOOD_HASH}'\n"
            "    permissions: {'/': {admin: '.*'}}\n",
            "users[0].permissions./.admin: unknown key",
        ),
        (
            f"users:\n  - name: a\n    password_hash: '{GOOD_HASH}'\n    loopback_only: 1\n",
            "users[0].loopback_only: must be true or false",
        ),
        (
            f"users:\n  - name: a\n    password_hash: '{GOOD_HASH}'\n    role: admin\n",
            "users[0].role: unknown key",
        ),
        ("users:\n  - just-a-name\n", "users[0]: must be a mapping"),
    ],
)
def test_bad_users_name_key_path(tmp_path: Path, users: str, expected: str) -> None:
    """User entries are validated one by one, with their index in the path."""
    assert expected in _error(tmp_path, users)


def test_missing_users(tmp_path: Path) -> None:
    """A file without users (or an empty file) is refused: users is required."""
    assert "users: must be a non-empty list" in _error(tmp_path, "log_level: info\n")
    assert "users: must be a non-empty list" in _error(tmp_path, "")


def test_plain_password_refused(tmp_path: Path) -> None:
    """A plain-text password key is refused, naming users[0].password."""
    text = "users:\n  - name: app\n    password: guest\n"
    assert "users[0].password:" in _error(tmp_path, text)


def test_plain_password_refused_with_explanation(tmp_path: Path) -> None:
    """The refusal says plain-text passwords are not accepted (the intended message)."""
    text = f"users:\n  - name: app\n    password_hash: '{GOOD_HASH}'\n    password: guest\n"
    assert "plain-text passwords are not accepted" in _error(tmp_path, text)


def test_user_permissions_name_configured_vhosts(tmp_path: Path) -> None:
    """Permissions for a vhost that is not declared are refused, naming user entry and vhost;
    listed vhosts get exactly the regexes given (missing kinds default to '.*')."""
    text = (
        "vhosts: ['/', prod]\n"
        f"users:\n  - name: app\n    password_hash: '{GOOD_HASH}'\n"
        "    permissions: {prod: {configure: '', write: '^orders$'}, staging: {}}\n"
    )
    message = _error(tmp_path, text)
    assert "users[0].permissions.staging: vhost 'staging' is not in vhosts" in message
    ok = text.replace(", staging: {}", "")
    (user,) = load_config(_write(tmp_path, ok)).users
    assert user.permissions == {"prod": Permission("", "^orders$", ".*")}


def test_environment_overrides_keys(tmp_path: Path) -> None:
    """WARREN_<SECTION>__<KEY> variables override the file; values are YAML; unrelated
    WARREN_* variables are ignored; a bad override names the variable."""
    environ = {
        "WARREN_LIMITS__FRAME_MAX": "65536",
        "WARREN_LISTENERS__AMQP__HOST": "0.0.0.0",
        "WARREN_DATA_DIR": "/var/lib/warren",
        "WARREN_VHOSTS": "['/', prod]",
        "WARREN_TEST_TARGET": "amqp://elsewhere",
    }
    config = load_config(_write(tmp_path, MINIMAL), environ)
    assert config.limits.frame_max == 65536
    assert config.listener.host == "0.0.0.0"
    assert config.data_dir == Path("/var/lib/warren")
    assert config.vhosts == ("/", "prod")
    with pytest.raises(ConfigError, match=r"limits\.frame_max: must be an integer"):
        load_config(_write(tmp_path, MINIMAL), {"WARREN_LIMITS__FRAME_MAX": "tiny"})
    with pytest.raises(ConfigError, match="WARREN_USERS__NAME: users is not a mapping"):
        load_config(_write(tmp_path, MINIMAL), {"WARREN_USERS__NAME": "bob"})


@pytest.mark.parametrize("text", ["users: [unclosed\n", "a: b: c\n", "key: 'open\n", "\t- x\n"])
def test_not_yaml(tmp_path: Path, text: str) -> None:
    """Unparseable YAML is a ConfigError saying so."""
    assert "not valid YAML" in _error(tmp_path, text)


def test_top_level_not_mapping(tmp_path: Path) -> None:
    """A YAML list at the top level is refused as not a mapping."""
    assert "must be a mapping" in _error(tmp_path, "- a\n- b\n")


def test_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError naming it."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path)


# ------------------------------------------------------------------------------------ overrides


def test_with_overrides() -> None:
    """Overrides replace port, host, data_dir, metrics_port; None leaves a value alone."""
    base = BrokerConfig()
    changed = base.with_overrides(port=5673, host="0.0.0.0", data_dir="/tmp/w", metrics_port=0)
    assert changed.listener == Listener("0.0.0.0", 5673)
    assert changed.data_dir == Path("/tmp/w")
    assert changed.metrics_port == 0
    assert base.listener == Listener()
    assert base.metrics_port == 15692
    same = base.with_overrides(port=None, host=None, data_dir=None, metrics_port=None)
    assert same == base
    assert base.with_overrides(port=6000).listener == Listener("127.0.0.1", 6000)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"port": 70000}, "--port"),
        ({"port": "x"}, "--port"),
        ({"metrics_port": -1}, "--metrics-port"),
    ],
)
def test_with_overrides_validates(changes: dict[str, object], flag: str) -> None:
    """Bad override values are ConfigErrors naming the command-line flag."""
    with pytest.raises(ConfigError, match=f"^{flag}: must be an integer"):
        BrokerConfig().with_overrides(**changes)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("metrics_port: 5672\n", "metrics_port: port 5672 is already used by listeners.amqp.port"),
        (
            "management:\n  listener:\n    port: 15692\n",
            "management.listener.port: port 15692 is already used by metrics_port",
        ),
        ("admin_port: 15672\n", "admin_port: renamed; set management.listener.port instead"),
        ("management:\n  listener:\n    certfile: /nope.pem\n", "/nope.pem is not a readable"),
        ("load_definitions: /nope.json\n", "load_definitions: /nope.json is not a readable"),
        ("limits:\n  memory_high_watermark: 1.5\n", "is neither a fraction of memory"),
        ("data_dir: false\n", "data_dir: must be a non-empty string"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_start(
    tmp_path: Path, extra: str, expected: str
) -> None:
    """Port collisions, an ambiguous watermark and a non-path data_dir are config errors."""
    assert expected in _error(tmp_path, MINIMAL + extra)


def test_duplicate_users_and_empty_environment_values_are_refused(tmp_path: Path) -> None:
    """A user listed twice, or an environment override with an empty value, is an error
    (an unset compose variable must not turn durability off)."""
    twice = MINIMAL + MINIMAL.split("users:\n", 1)[1]
    assert "users: 'app' is listed more than once" in _error(tmp_path, twice)
    with pytest.raises(ConfigError, match="WARREN_DATA_DIR: empty value"):
        load_config(_write(tmp_path, MINIMAL), {"WARREN_DATA_DIR": ""})


def test_user_tags_are_a_list_or_rabbitmq_comma_string(tmp_path: Path) -> None:
    """Tags decide what a user may do in the management API; a wrong type is named."""
    text = MINIMAL.replace('"\n', '"\n    tags: "monitoring, policymaker"\n', 1)
    config = load_config(_write(tmp_path, text), environ={})
    assert config.users[0].tags == ("monitoring", "policymaker")
    bad = MINIMAL.replace('"\n', '"\n    tags: 3\n', 1)
    assert "users[0].tags: must be a list of tags" in _error(tmp_path, bad)
