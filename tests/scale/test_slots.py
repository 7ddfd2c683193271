"""The slot policy as a table of numbers, and one driver's claim against the database."""

from __future__ import annotations

import pytest

from modelfab.compute.slots import Claim, RunSlots, grant, set_tenant_quota, tenant_quota
from modelfab.errors import ConfigError
from modelfab.store import Workspace

HIGH, NORMAL, LOW = 0, 1, 2


@pytest.mark.parametrize(
    ("me", "others", "cap", "expected"),
    [
        (Claim(NORMAL, 4, 0), [], None, 4),  # no quota: whatever it can run
        (Claim(NORMAL, 4, 0), [], 2, 2),  # the quota caps it
        (Claim(NORMAL, 4, 0), [Claim(NORMAL, 2, 2)], 3, 1),  # first come keeps its slots
        (Claim(NORMAL, 2, 2), [Claim(HIGH, 2, 0)], 2, 0),  # a waiting high run: the normal one yields
        (Claim(NORMAL, 2, 2), [Claim(HIGH, 2, 0)], 4, 2),  # room for both: nobody yields
        (Claim(HIGH, 2, 0), [Claim(NORMAL, 2, 2)], 2, 0),  # high waits for the normal jobs to end
        (Claim(HIGH, 2, 1), [Claim(NORMAL, 2, 1)], 2, 1),  # ... and takes each slot they free
        (Claim(LOW, 2, 0), [Claim(HIGH, 1, 1), Claim(NORMAL, 3, 0)], 3, 0),  # low waits for both
        (Claim(NORMAL, 3, 0), [Claim(HIGH, 1, 1), Claim(LOW, 2, 0)], 3, 2),  # low's wait is no bar
        (Claim(NORMAL, 3, 0), [Claim(NORMAL, 3, 3)], 2, 0),  # over the cap (cap lowered): nothing
    ],
)
def test_grant(me: Claim, others: list[Claim], cap: int | None, expected: int) -> None:
    assert grant(me, others, cap) == expected


def test_quota_is_set_cleared_and_checked(any_ws: Workspace) -> None:
    engine = any_ws.engine
    assert tenant_quota(engine, "default") is None
    set_tenant_quota(engine, "default", 3)
    set_tenant_quota(engine, "default", 2)
    assert tenant_quota(engine, "default") == 2
    assert tenant_quota(engine, "other") is None
    set_tenant_quota(engine, "default", None)
    assert tenant_quota(engine, "default") is None
    with pytest.raises(ConfigError, match="at least 1"):
        set_tenant_quota(engine, "default", 0)


def test_drivers_share_the_quota_and_a_high_run_takes_the_slots_a_normal_run_frees(
    any_ws: Workspace,
) -> None:
    engine = any_ws.engine
    set_tenant_quota(engine, "default", 2)
    ticks = [0.0]

    def clock() -> float:
        return ticks[0]

    normal = RunSlots(engine, "default", "n", workers=2, jobs=10, clock=clock)
    high = RunSlots(engine, "default", "h", priority="high", workers=2, jobs=10, clock=clock)
    assert normal.limit(0) == 2  # alone: the whole quota
    assert high.limit(0) == 0  # the quota is held
    ticks[0] += 1
    assert normal.limit(2) == 2  # high waits, but running jobs are never taken back
    assert normal.limit(1) == 1  # between syncs: a finished job's slot is not refilled
    ticks[0] += 1
    assert normal.limit(1) == 1
    assert high.limit(0) == 1  # the freed slot goes to the high run
    ticks[0] += 1
    assert normal.limit(0) == 0
    assert high.limit(1) == 2
    high.release()
    ticks[0] += 1
    assert normal.limit(0) == 2  # high finished: normal gets the quota back
    normal.release()
    with pytest.raises(ConfigError, match="priority 'urgent'"):
        RunSlots(engine, "default", "x", priority="urgent")
