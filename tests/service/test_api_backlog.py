"""A backlog of requests larger than the thread pool and the connection pool: every request is
answered. (A request's session used to give its connection back in a second thread hop queued
behind handlers that were themselves waiting for a connection: the pool deadlocked until its
timeout and the requests failed with 500.)"""

from __future__ import annotations

import asyncio

from tests.service.conftest import Service


async def test_a_backlog_of_requests_is_answered_without_starving_the_pool(
    service: Service,
) -> None:
    tenant = await service.tenant("read")
    answers = await asyncio.gather(*(tenant.http.get("/v1/runs") for _ in range(150)))
    assert [a.status_code for a in answers] == [200] * 150, {a.text for a in answers}
