"""/v1/pools: named slot counts steps take (`pool: spark`). The platform admin sets global
pools (`/v1/pools/{name}`) and a tenant's own (`/v1/tenants/{tenant}/pools/{name}`); a tenant
reads the pools its steps can use, with the slots in use now."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from pipeline_service.api.deps import PlatformAdminDep, PrincipalDep, SessionDep
from pipeline_service.api.models import NAME_PATTERN, Request
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.db import pools as repo
from pipeline_service.db.models import Tenant
from pipeline_service.db.tenants import SCOPE_RANK, Scope, get_tenant

router = APIRouter(prefix="/v1/pools", tags=["pools"])
tenant_router = APIRouter(prefix="/v1/tenants", tags=["pools"])

PoolName = Annotated[str, Path(pattern=NAME_PATTERN, description="The pool's name.")]


class PoolIn(Request):
    slots: int = Field(ge=1, le=100_000, description="Steps of this pool that run at once.")


class PoolPublic(BaseModel):
    name: str
    slots: int
    in_use: int = Field(description="Slots held by running step attempts now.")
    scope: Literal["global", "tenant"]


def _answer(uses: list[repo.PoolUse]) -> list[PoolPublic]:
    return [PoolPublic(name=u.name, slots=u.slots, in_use=u.in_use, scope=u.scope) for u in uses]


def _one(session: Session, tenant_id: int | None, name: str) -> PoolPublic:
    scope = "global" if tenant_id is None else "tenant"
    for use in repo.visible_pools(session, tenant_id):
        if use.name == name and use.scope == scope:
            return _answer([use])[0]
    raise not_found(f"pool '{name}'")


def _tenant(session: Session, name: str) -> Tenant:
    tenant = get_tenant(session, name)
    if tenant is None:
        raise not_found(f"tenant '{name}'")
    return tenant


@router.get("", response_model=list[PoolPublic])
def list_pools(principal: PrincipalDep, session: SessionDep) -> list[PoolPublic]:
    """A tenant key: the global pools and the tenant's own; the admin key: the global ones."""
    if principal.tenant is not None and SCOPE_RANK[principal.scope] < SCOPE_RANK[Scope.READ]:
        raise ProblemError(403, "this API key cannot read")
    tenant_id = principal.tenant.id if principal.tenant is not None else None
    return _answer(repo.visible_pools(session, tenant_id))


@router.put("/{name}", response_model=PoolPublic)
def set_global_pool(
    name: PoolName, body: PoolIn, admin: PlatformAdminDep, session: SessionDep
) -> PoolPublic:
    """Create or resize a global pool (shared by every tenant's steps)."""
    repo.set_pool(session, None, name, body.slots, actor=admin.actor)
    session.commit()
    return _one(session, None, name)


@router.delete("/{name}", status_code=204)
def delete_global_pool(name: PoolName, admin: PlatformAdminDep, session: SessionDep) -> Response:
    if not repo.delete_pool(session, None, name):
        raise not_found(f"pool '{name}'")
    session.commit()
    return Response(status_code=204)


@tenant_router.get("/{tenant}/pools", response_model=list[PoolPublic])
def list_tenant_pools(
    tenant: str, admin: PlatformAdminDep, session: SessionDep
) -> list[PoolPublic]:
    return _answer(repo.visible_pools(session, _tenant(session, tenant).id))


@tenant_router.put("/{tenant}/pools/{name}", response_model=PoolPublic)
def set_tenant_pool(
    tenant: str, name: PoolName, body: PoolIn, admin: PlatformAdminDep, session: SessionDep
) -> PoolPublic:
    """Create or resize a tenant's own pool (it wins over a global pool of the same name)."""
    found = _tenant(session, tenant)
    repo.set_pool(session, found.id, name, body.slots, actor=admin.actor)
    session.commit()
    return _one(session, found.id, name)


@tenant_router.delete("/{tenant}/pools/{name}", status_code=204)
def delete_tenant_pool(
    tenant: str, name: PoolName, admin: PlatformAdminDep, session: SessionDep
) -> Response:
    if not repo.delete_pool(session, _tenant(session, tenant).id, name):
        raise not_found(f"pool '{name}'")
    session.commit()
    return Response(status_code=204)
