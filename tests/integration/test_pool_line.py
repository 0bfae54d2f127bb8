"""Pool slots go first come, first served, on real SQLite and PostgreSQL: an attempt that finds
the pool full waits in line; a freed slot goes to the one that has waited longest, not to
whichever asks first; a waiter that stopped asking leaves the line; the API's view of the line
(`waiting_steps`) gives each waiter its place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import PoolLease, PoolWaiter
from pipeline_service.db.pools import (
    WAITER_TTL,
    Acquired,
    acquire_slot,
    release_slot,
    set_pool,
    waiting_steps,
)
from pipeline_service.db.session import transaction
from pipeline_service.db.tenants import create_tenant


@pytest.fixture(autouse=True)
def _give_back(sessions: sessionmaker[Session]) -> Iterator[None]:
    """The database is shared with the session's other tests (tests/service counts leases)."""
    yield
    with transaction(sessions) as session:
        for model in (PoolLease, PoolWaiter):
            session.execute(delete(model).where(model.holder.like("t-%")))


def setup(sessions: sessionmaker[Session], slots: int) -> tuple[str, str]:
    with transaction(sessions) as session:
        tenant = create_tenant(session, f"t-{uuid.uuid4().hex[:10]}", actor="test")
        pool = f"p-{uuid.uuid4().hex[:8]}"
        set_pool(session, tenant.id, pool, slots, actor="test")
        return tenant.name, pool


def ask(sessions: sessionmaker[Session], tenant: str, pool: str, run: str, step: str) -> Acquired:
    with transaction(sessions) as session:
        return acquire_slot(session, tenant, pool, f"{run}/{step}", run)


def test_a_freed_slot_goes_to_the_longest_waiting(sessions: sessionmaker[Session]) -> None:
    tenant, pool = setup(sessions, slots=1)
    run = f"{tenant}/p/{uuid.uuid4().hex[:6]}"
    assert ask(sessions, tenant, pool, run, "holder") == Acquired.YES
    assert ask(sessions, tenant, pool, run, "early") == Acquired.FULL
    assert ask(sessions, tenant, pool, run, "late") == Acquired.FULL
    with sessions() as session:
        line = waiting_steps(session, run)
    assert {k: v.position for k, v in line.items()} == {"early": 1, "late": 2}
    assert line["early"].pool == pool
    with transaction(sessions) as session:
        release_slot(session, f"{run}/holder")
    # `late` asks first after the release: it stays in line; `early` gets the slot.
    assert ask(sessions, tenant, pool, run, "late") == Acquired.FULL
    assert ask(sessions, tenant, pool, run, "early") == Acquired.YES
    with sessions() as session:
        assert {k: v.position for k, v in waiting_steps(session, run).items()} == {"late": 1}
    # A newcomer does not pass a waiter either.
    with transaction(sessions) as session:
        release_slot(session, f"{run}/early")
    assert ask(sessions, tenant, pool, run, "newcomer") == Acquired.FULL
    assert ask(sessions, tenant, pool, run, "late") == Acquired.YES


def test_a_waiter_that_stopped_asking_leaves_the_line(sessions: sessionmaker[Session]) -> None:
    tenant, pool = setup(sessions, slots=1)
    run = f"{tenant}/p/{uuid.uuid4().hex[:6]}"
    assert ask(sessions, tenant, pool, run, "holder") == Acquired.YES
    assert ask(sessions, tenant, pool, run, "gone") == Acquired.FULL
    assert ask(sessions, tenant, pool, run, "patient") == Acquired.FULL
    with transaction(sessions) as session:  # `gone` last asked longer ago than the TTL
        session.execute(
            update(PoolWaiter)
            .where(PoolWaiter.holder == f"{run}/gone")
            .values(last_seen=utcnow() - WAITER_TTL - timedelta(seconds=1))
        )
        release_slot(session, f"{run}/holder")
    with sessions() as session:
        assert {k: v.position for k, v in waiting_steps(session, run).items()} == {"patient": 1}
    assert ask(sessions, tenant, pool, run, "patient") == Acquired.YES


def test_free_slots_go_to_as_many_waiters_as_there_are(sessions: sessionmaker[Session]) -> None:
    tenant, pool = setup(sessions, slots=2)
    run = f"{tenant}/p/{uuid.uuid4().hex[:6]}"
    assert [ask(sessions, tenant, pool, run, s) for s in ("a", "b", "c", "d")] == [
        Acquired.YES,
        Acquired.YES,
        Acquired.FULL,
        Acquired.FULL,
    ]
    with transaction(sessions) as session:
        release_slot(session, f"{run}/a")
        release_slot(session, f"{run}/b")
    # Two slots free, two waiting: the second in line need not wait for the first to ask.
    assert ask(sessions, tenant, pool, run, "d") == Acquired.YES
    assert ask(sessions, tenant, pool, run, "c") == Acquired.YES
    assert ask(sessions, tenant, pool, run, "e") == Acquired.FULL
