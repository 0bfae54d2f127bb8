"""Request dependencies: the database session, and who is calling (tenant + scope)."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from pipeline_service.api.problems import ProblemError
from pipeline_service.api.services import Services
from pipeline_service.db.models import Tenant
from pipeline_service.db.tenants import SCOPE_RANK, Scope, hash_key, resolve_api_key

PLATFORM_ADMIN = "platform-admin"
"""The actor name of the settings' admin key."""

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer lam_...`")


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[Session]:
    """A session per request; the router commits what it means to keep. Opening one does no
    I/O (it connects on first use), so only the close goes to a thread."""
    session = services.sessions()
    try:
        yield session
    finally:
        await anyio.to_thread.run_sync(session.close, limiter=services.closing)


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant's key (with its scope), or the platform admin."""

    actor: str
    scope: Scope
    tenant: Tenant | None = None

    @property
    def is_platform_admin(self) -> bool:
        return self.tenant is None


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("an API key is required: send `Authorization: Bearer <key>`")
    given = credentials.credentials
    admin = services.settings.admin_api_key
    if admin is not None and hmac.compare_digest(given.encode(), admin.get_secret_value().encode()):
        return Principal(actor=PLATFORM_ADMIN, scope=Scope.ADMIN)
    digest = hash_key(given)
    cached: Principal | None = services.keys.get(digest)
    if cached is not None:
        return cached
    principal = await anyio.to_thread.run_sync(_look_up_key, services, given)
    if principal is None:
        raise _unauthorized("the API key is not valid (unknown or revoked)")
    services.keys.put(digest, principal)
    return principal


def _look_up_key(services: Services, given: str) -> Principal | None:
    # Its own short transaction: on SQLite every transaction holds the write lock.
    with services.sessions() as session:
        key = resolve_api_key(session, given)
        if key is None:
            return None
        return Principal(actor=key.name, scope=Scope(key.scope), tenant=key.tenant)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def require_platform_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_platform_admin:
        raise ProblemError(403, "only the platform admin key (LAMINAR_ADMIN_API_KEY) may do this")
    return principal


PlatformAdminDep = Annotated[Principal, Depends(require_platform_admin)]


def tenant_scope(minimum: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: a tenant key with at least `minimum` scope."""

    async def check(principal: PrincipalDep) -> Principal:
        if principal.tenant is None:
            raise ProblemError(
                403,
                "the platform admin key manages tenants and keys; use a tenant's API key here",
            )
        if SCOPE_RANK[principal.scope] < SCOPE_RANK[minimum]:
            raise ProblemError(
                403, f"this API key has scope '{principal.scope}'; this needs '{minimum}'"
            )
        return principal

    return check


ReaderDep = Annotated[Principal, Depends(tenant_scope(Scope.READ))]
OperatorDep = Annotated[Principal, Depends(tenant_scope(Scope.OPERATE))]
TenantAdminDep = Annotated[Principal, Depends(tenant_scope(Scope.ADMIN))]


def tenant_of(principal: Principal) -> Tenant:
    assert principal.tenant is not None  # the scope dependencies guarantee it
    return principal.tenant
