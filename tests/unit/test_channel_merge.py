"""Tx.Rollback puts the transaction's deliveries back among the unacked ones in tag order."""

from __future__ import annotations

from typing import Any

import pytest

from broker.amqp.channel import _merged_by_tag


def unacked(*tags: int) -> dict[int, Any]:
    return {tag: f"d{tag}" for tag in tags}


@pytest.mark.pure_python
@pytest.mark.parametrize(
    ("held", "restored"),
    [
        ((), (3, 4)),  # nothing else unacked
        ((1, 2), (5, 7)),  # all after: appended
        ((5, 9), (1, 2)),  # all before: prepended
        ((2, 5, 9), (1, 3, 7, 10)),  # interleaved: merged
    ],
    ids=["empty", "after", "before", "interleaved"],
)
def test_restored_deliveries_keep_tag_order(held: tuple, restored: tuple) -> None:
    merged = _merged_by_tag(unacked(*held), sorted(unacked(*restored).items()))
    assert list(merged) == sorted((*held, *restored))
    assert merged == unacked(*held, *restored)
