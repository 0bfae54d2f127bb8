"""`acquire_pool_slot` / `release_pool_slot`: the workflow's pool slots in the service
database (workflows/pools.py calls them around a step attempt)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.names import ACQUIRE_POOL_SLOT, POOL_FULL, POOL_UNKNOWN, RELEASE_POOL_SLOT
from pipeline_service.db.pools import Acquired, acquire_slot, release_slot
from pipeline_service.db.session import transaction
from schemas.pools import PoolSlot

log = logging.getLogger(__name__)


class PoolActivities:
    """With no database (`laminar run` without the service), pools do not limit anything."""

    def __init__(self, sessions: sessionmaker[Session] | None) -> None:
        self._sessions = sessions

    @activity.defn(name=ACQUIRE_POOL_SLOT)
    async def acquire_pool_slot(self, slot: PoolSlot) -> PoolSlot:
        if self._sessions is None:
            return slot
        sessions = self._sessions

        def take() -> Acquired:
            with transaction(sessions) as session:
                return acquire_slot(session, slot.tenant, slot.pool, slot.holder, slot.workflow_id)

        answer = await asyncio.to_thread(take)
        if answer == Acquired.UNKNOWN:
            raise ApplicationError(
                f"pool '{slot.pool}' is not defined for tenant '{slot.tenant}' "
                "(the platform admin sets pools: PUT /v1/pools/{name})",
                type=POOL_UNKNOWN,
                non_retryable=True,
            )
        if answer == Acquired.FULL:
            # Temporal retries this attempt (WAIT_FOR_SLOT) until a slot frees.
            # Benign: the worker logs these expected failures at DEBUG, not as warnings.
            raise ApplicationError(
                f"pool '{slot.pool}' is full",
                type=POOL_FULL,
                category=ApplicationErrorCategory.BENIGN,
            )
        return slot

    @activity.defn(name=RELEASE_POOL_SLOT)
    async def release_pool_slot(self, slot: PoolSlot) -> PoolSlot:
        if self._sessions is None:
            return slot
        sessions = self._sessions

        def give_back() -> None:
            with transaction(sessions) as session:
                release_slot(session, slot.holder)

        await asyncio.to_thread(give_back)
        return slot
