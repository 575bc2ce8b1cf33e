"""Users, vhosts, permissions and policies as one document the log keeps (RUNTIME records and
every snapshot), and back.

Which wins, the config file or the log: the config's `users` and `vhosts` seed a broker whose
data directory has none of this yet (its first start, or data from before Warren kept them);
from then on the log is the truth, changed through the management API, and the config's lists
are not read again (the broker logs `config.accounts_seeded_earlier` when they differ). With
`data_dir: null` nothing is kept and the config is used at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.auth import User
from broker.config import Permission
from broker.policies import Policy

if TYPE_CHECKING:
    from broker.server import Broker


def document(broker: Broker) -> dict[str, Any]:
    users = [
        {
            "name": user.name,
            "password_hash": user.password_hash,
            "tags": list(user.tags),
            "loopback_only": user.loopback_only,
            "permissions": [
                {"vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read}
                for vhost, p in sorted(user.permissions.items())
            ],
        }
        for user in sorted(broker.auth.users.values(), key=lambda u: u.name)
    ]
    vhosts = [
        {
            "name": name,
            "description": broker.vhost_metadata.get(name, {}).get("description", ""),
            "tags": list(broker.vhost_metadata.get(name, {}).get("tags", ())),
        }
        for name in sorted(broker.vhosts)
    ]
    policies = [
        {
            "vhost": policy.vhost,
            "name": policy.name,
            "pattern": policy.pattern,
            "apply-to": policy.apply_to,
            "priority": policy.priority,
            "definition": policy.definition,
        }
        for policy in broker.policies.all()
    ]
    return {"users": users, "vhosts": vhosts, "policies": policies}


def users_of(document: dict[str, Any]) -> list[User]:
    return [
        User(
            entry["name"],
            entry["password_hash"],
            {
                p["vhost"]: Permission(p["configure"], p["write"], p["read"])
                for p in entry["permissions"]
            },
            bool(entry["loopback_only"]),
            tuple(entry["tags"]),
        )
        for entry in document["users"]
    ]


def vhosts_of(document: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(v["name"], v["description"], tuple(v["tags"])) for v in document["vhosts"]]


def policies_of(document: dict[str, Any]) -> list[Policy]:
    return [
        Policy(p["vhost"], p["name"], p["pattern"], p["apply-to"], p["priority"], p["definition"])
        for p in document["policies"]
    ]
