"""What every route needs: the controller's parts and the caller's API key (checked by
hearth.api.authentication before the route is reached)."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path, Request

from hearth import providers
from hearth.api.authentication import authorize
from hearth.core.runtime import Controller
from hearth.store.models import ApiKey

USER_ID_PATTERN = r"^[A-Za-z0-9._@+-]{1,128}$"  # the product's user ids, as given to Hearth
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN)]
# The schema names the known providers; an unknown one is still answered 400, naming them.
PROVIDERS = {"enum": providers.names()}
ProviderName = Annotated[str, Path(max_length=64, json_schema_extra=PROVIDERS)]


def controller(request: Request) -> Controller:
    return request.app.state.controller


async def require_key(request: Request) -> ApiKey:
    """The caller's key, as Authentication (hearth.api.authentication) accepted it before
    the request was read; 401 on a path it does not guard."""
    record = getattr(request.state, "api_key", None)
    if record is None:
        raise HTTPException(401, "missing API key (Authorization: Bearer <key>)")
    return record


async def require_admin(request: Request) -> ApiKey:
    """The caller's key, an admin key (403 otherwise)."""
    record = await require_key(request)
    authorize(record, "admin")
    return record
