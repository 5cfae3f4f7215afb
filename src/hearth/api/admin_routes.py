"""Routes for the operator (admin keys only): the egress audit."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from hearth.api.deps import USER_ID_PATTERN, controller, require_admin
from hearth.api.schemas import EgressConnectionView, EgressLog
from hearth.core.egress import connection_view, connections

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/egress")
async def egress_log(
    request: Request,
    vm_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{1,32}$")] = None,
    user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
    verdict: Literal["allowed", "refused", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EgressLog:
    """Every attempt of a VM to reach a name, newest first: who, which name, the verdict
    and why, bytes each way. Never any content."""
    rows = await asyncio.to_thread(
        connections, controller(request).db, vm_id, user_id, verdict, limit
    )
    return EgressLog(connections=[EgressConnectionView(**connection_view(c)) for c in rows])
