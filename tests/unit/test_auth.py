"""Password hashes in RabbitMQ's format, SASL PLAIN/AMQPLAIN parsing, login and vhost access."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from pamqp import encode

from broker.auth import Authenticator, User, check_password, hash_password, is_loopback
from broker.config import Permission, load_config
from broker.core.errors import ChannelException

SALT = b"\x90\x8d\xc6\x0a"
REFUSED = "Login was refused using authentication mechanism {}. For details see the broker logfile."


RESTRICTED = Permission(configure="", write="orders", read="^amq\\.gen")


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(
        [
            User("guest", hash_password("guest"), {"/": Permission()}, loopback_only=True),
            User("app", hash_password("s3cret"), {"/": Permission(), "prod": RESTRICTED}),
            User("admin", hash_password("root"), {"/": Permission(), "prod": Permission()}),
        ]
    )


def _amqplain(**fields: object) -> bytes:
    """An AMQPLAIN response: a field table without its 4-byte length prefix."""
    return encode.field_table(fields)[4:]


# ------------------------------------------------------------------------------------ hashes


def test_hash_known_vector_password() -> None:
    """base64(salt + sha256(salt + b'password')) with RabbitMQ's documented salt."""
    expected = base64.b64encode(SALT + hashlib.sha256(SALT + b"password").digest()).decode()
    assert expected == "kI3GCk2jWYt9PJNrrrUnULGsAO8hg5LrmRJdgHSRtwxCQxgc"
    assert hash_password("password", SALT) == expected
    assert check_password("password", expected)


def test_hash_rabbitmq_documented_vector() -> None:
    """The example in RabbitMQ's passwords guide: salt 908DC60A, password 'test12'."""
    documented = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    assert hash_password("test12", SALT) == documented
    assert check_password("test12", documented)
    assert not check_password("test13", documented)


@pytest.mark.parametrize("password", ["guest", "", "pässwörd", "x" * 200])
def test_hash_round_trip(password: str) -> None:
    """A fresh hash (random salt) is 48 characters and verifies only its own password."""
    hashed = hash_password(password)
    assert len(hashed) == 48
    assert len(base64.b64decode(hashed)) == 36
    assert check_password(password, hashed)
    assert not check_password(password + "!", hashed)


def test_hashes_are_salted() -> None:
    """Two hashes of one password differ (random salt) and both verify."""
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    assert check_password("same", first) and check_password("same", second)


@pytest.mark.parametrize(
    "bad",
    ["", "not base64!!", base64.b64encode(b"short").decode(), "kI3GCk2jWYt9PJNr", "=" * 48],
)
def test_check_password_rejects_malformed_hashes(bad: str) -> None:
    """Garbage or wrong-length hashes never verify and never raise."""
    assert check_password("password", bad) is False


# ------------------------------------------------------------------------------------ SASL


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (b"\x00guest\x00guest", ("guest", "guest")),
        ("\x00app\x00s3cret", ("app", "s3cret")),
        (b"authz\x00user\x00pass word", ("user", "pass word")),
        (b"\x00\x00", ("", "")),
        ("\x00jürgen\x00päss".encode(), ("jürgen", "päss")),
    ],
)
def test_parse_plain(response: bytes | str, expected: tuple[str, str]) -> None:
    """PLAIN is authzid NUL authcid NUL password."""
    assert Authenticator.parse_response("PLAIN", response) == expected


@pytest.mark.parametrize("response", [b"guest guest", b"\x00a\x00b\x00c", b""])
def test_parse_plain_malformed_raises(response: bytes) -> None:
    """A PLAIN response without exactly two NULs is a syntax error (RabbitMQ's 502)."""
    with pytest.raises(ValueError):
        Authenticator.parse_response("PLAIN", response)


def test_parse_amqplain() -> None:
    """AMQPLAIN is a field table without the length prefix, with LOGIN and PASSWORD."""
    response = _amqplain(LOGIN="guest", PASSWORD="guest")
    assert response[:6] == b"\x05LOGIN"
    assert Authenticator.parse_response("AMQPLAIN", response) == ("guest", "guest")
    other_order = _amqplain(PASSWORD="pw", LOGIN="jürgen", EXTRA=1)
    assert Authenticator.parse_response("AMQPLAIN", other_order) == ("jürgen", "pw")


def test_parse_amqplain_missing_fields_and_truncation() -> None:
    """A missing field or a truncated table is a syntax error, never a login as someone."""
    with pytest.raises(ValueError):
        Authenticator.parse_response("AMQPLAIN", _amqplain(LOGIN="guest"))
    with pytest.raises(ValueError):
        Authenticator.parse_response("AMQPLAIN", b"")
    response = _amqplain(LOGIN="guest", PASSWORD="guest")
    for cut in range(len(response)):
        try:
            result = Authenticator.parse_response("AMQPLAIN", response[:cut])
        except ValueError:
            continue
        assert result != ("guest", "guest")  # a cut string value can only make a wrong login


def test_parse_amqplain_void_login_is_refused() -> None:
    """LOGIN and PASSWORD must be strings; a void LOGIN never becomes the user name 'None'."""
    with pytest.raises(ValueError):
        Authenticator.parse_response("AMQPLAIN", _amqplain(LOGIN=None, PASSWORD="x"))


@pytest.mark.parametrize("mechanism", ["EXTERNAL", "RABBIT-CR-DEMO", "plain", ""])
def test_parse_other_mechanisms(mechanism: str) -> None:
    """Unsupported mechanisms (case-sensitive names) give None."""
    assert Authenticator.parse_response(mechanism, b"\x00guest\x00guest") is None


# ------------------------------------------------------------------------------------ login


def test_authenticate_accepts_good_password(auth: Authenticator) -> None:
    """The right password from an allowed host is accepted (None)."""
    assert auth.authenticate("app", "s3cret", "10.1.2.3", "PLAIN") is None
    assert auth.authenticate("guest", "guest", "127.0.0.1", "AMQPLAIN") is None


@pytest.mark.parametrize(
    ("user", "password"), [("app", "wrong"), ("nobody", "s3cret"), ("", ""), ("app", "")]
)
@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_authenticate_refuses_bad_credentials(
    auth: Authenticator, user: str, password: str, mechanism: str
) -> None:
    """Wrong password and unknown user get the same RabbitMQ text naming the mechanism."""
    assert auth.authenticate(user, password, "127.0.0.1", mechanism) == REFUSED.format(mechanism)


@pytest.mark.parametrize("host", ["10.0.0.5", "192.168.1.1", "2001:db8::1", "localhost-ish", ""])
def test_authenticate_loopback_only_refuses_remote(auth: Authenticator, host: str) -> None:
    """A loopback_only user with the right password is refused from a non-loopback host."""
    assert auth.authenticate("guest", "guest", host, "PLAIN") == (
        "User 'guest' can only connect via localhost"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7", "::1", "[::1]"])
def test_authenticate_loopback_only_accepts_loopback(auth: Authenticator, host: str) -> None:
    """A loopback_only user is accepted from any loopback address."""
    assert auth.authenticate("guest", "guest", host, "PLAIN") is None


def test_authenticate_checks_password_before_loopback(auth: Authenticator) -> None:
    """A wrong password from a remote host gets the generic refusal, not the loopback hint."""
    assert auth.authenticate("guest", "nope", "10.0.0.5", "PLAIN") == REFUSED.format("PLAIN")


def test_ipv4_mapped_loopback_is_loopback() -> None:
    """A dual-stack listener sees local IPv4 clients as ::ffff:127.0.0.1: still loopback."""
    assert is_loopback("::ffff:127.0.0.1")


def test_vhost_access(auth: Authenticator) -> None:
    """Users may open the vhosts they have permissions in; unknown users none."""
    assert auth.vhost_access("app", "/") is not None
    assert auth.vhost_access("app", "prod") is not None
    assert auth.vhost_access("app", "other") is None
    assert auth.vhost_access("nobody", "/") is None


def test_configured_user_without_permissions_opens_no_vhost(tmp_path: Path) -> None:
    """A user listed in the config without permissions logs in but may open no vhost: the
    broker answers Connection.Open with 530 and the admin API shows it nothing."""
    path = tmp_path / "broker.yaml"
    path.write_text(
        f"vhosts: ['/', prod]\nusers:\n  - name: bob\n    password_hash: '{hash_password('pw')}'\n"
    )
    config = load_config(path, environ={})
    auth = Authenticator(
        [User(u.name, u.password_hash, u.permissions, u.loopback_only) for u in config.users]
    )
    assert auth.authenticate("bob", "pw", "10.0.0.5", "PLAIN") is None
    assert auth.vhost_access("bob", "/") is None
    assert auth.vhost_access("bob", "prod") is None


@pytest.mark.parametrize(
    ("operation", "kind", "name", "allowed"),
    [
        ("configure", "queue", "anything", False),  # '' grants nothing
        ("write", "exchange", "orders", True),
        ("write", "exchange", "orders-eu", True),  # searched, not anchored
        ("write", "exchange", "payments", False),
        ("write", "exchange", "", False),  # the default exchange is checked as amq.default
        ("read", "queue", "amq.gen-abc", True),
        ("read", "queue", "x.amq.gen-abc", False),  # ^ anchors where the pattern says so
    ],
)
def test_permission_regexes(
    auth: Authenticator, operation: str, kind: str, name: str, allowed: bool
) -> None:
    """configure/write/read regexes decide each operation as RabbitMQ's do (403 otherwise)."""
    access = auth.vhost_access("app", "prod")
    assert access is not None
    if allowed:
        access.check(operation, kind, name)
        return
    with pytest.raises(ChannelException) as refused:
        access.check(operation, kind, name)
    assert refused.value.code == 403
    shown = name or "amq.default"
    assert refused.value.reply_text == (
        f"ACCESS_REFUSED - access to {kind} '{shown}' in vhost 'prod' refused for user 'app'"
    )
