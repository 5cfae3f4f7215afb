"""Routes for the operator (admin keys only): VMs, sign-in sessions, users, the host's
resources, API keys, webhook endpoints with their deliveries, and the egress audit. An admin
key can also do everything an app key can (hearth.api.deps.require_key accepts both)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from hearth.api import keys
from hearth.api.auth_routes import session_view
from hearth.api.deps import USER_ID_PATTERN, UserId, controller, require_admin
from hearth.api.prompt_routes import prompt_summary
from hearth.api.schemas import (
    ConsoleTail,
    EgressConnectionView,
    EgressLog,
    HostView,
    KeyCreated,
    KeyList,
    KeyRequest,
    KeyView,
    PromptSummary,
    SessionList,
    SessionView,
    UserList,
    UserSummary,
    UserVm,
    VmList,
    VmView,
    WebhookAttemptView,
    WebhookDeliveryList,
    WebhookDeliveryView,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointRequest,
    WebhookEndpointUpdate,
    WebhookEndpointView,
)
from hearth.api.user_routes import credential_view
from hearth.core import inventory
from hearth.core.egress import connection_view, connections
from hearth.store import outbox
from hearth.store.models import ApiKey, AuthSessionStatus, DeliveryStatus, Vm, VmState
from hearth.store.webhook_endpoints import EndpointInfo

VM_ID_PATTERN = r"^[0-9a-f]{1,32}$"
PROVIDER_PATTERN = r"^[a-z0-9_]{1,32}$"
ENDPOINT_ID_PATTERN = r"^[0-9a-f]{32}$"
EgressVerdict = Literal["allowed", "refused", "failed"]
VmId = Annotated[str, Path(pattern=VM_ID_PATTERN)]
SessionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,16}$")]
EndpointId = Annotated[str, Path(pattern=ENDPOINT_ID_PATTERN)]

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/egress")
async def egress_log(
    request: Request,
    vm_id: Annotated[str | None, Query(pattern=VM_ID_PATTERN)] = None,
    user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
    verdict: EgressVerdict | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EgressLog:
    """Every attempt of a VM to reach a name, newest first: who, which name, the verdict
    and why, bytes each way. Never any content."""
    rows = await asyncio.to_thread(
        connections, controller(request).db, vm_id, user_id, verdict, limit
    )
    return EgressLog(connections=[EgressConnectionView(**connection_view(c)) for c in rows])


# -- VMs -----------------------------------------------------------------------------------


def vm_view(vm: Vm) -> VmView:
    return VmView(
        vm_id=vm.id,
        image=vm.image,
        vmm=vm.vmm,
        state=vm.state,
        ip=vm.ip,
        user_id=vm.user_id,
        pool=vm.pool,
        pool_provider=vm.pool_provider,
        boot_seconds=vm.boot_seconds,
        failed_step=vm.failed_step,
        error=vm.error,
        created_at=vm.created_at.isoformat(),
        last_active_at=vm.last_active_at.isoformat() if vm.last_active_at else None,
    )


def _vm(request: Request, vm_id: str) -> Vm:
    vms = inventory.vms(controller(request), live_only=False)
    found = next((vm for vm in vms if vm.id == vm_id), None)
    if found is None:
        raise HTTPException(404, f"no VM {vm_id}")
    return found


@router.get("/vms")
def list_vms(
    request: Request,
    state: VmState | None = None,
    image: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,32}$")] = None,
) -> VmList:
    """The VMs that live (or, with `state`, those in it), newest first."""
    return VmList(vms=[vm_view(vm) for vm in inventory.vms(controller(request), state, image)])


@router.get("/vms/{vm_id}")
def get_vm(vm_id: VmId, request: Request) -> VmView:
    return vm_view(_vm(request, vm_id))


@router.get("/vms/{vm_id}/console")
def vm_console(
    vm_id: VmId, request: Request, lines: Annotated[int, Query(ge=1, le=5000)] = 200
) -> ConsoleTail:
    _vm(request, vm_id)
    return ConsoleTail(vm_id=vm_id, lines=inventory.console_tail(controller(request), vm_id, lines))


@router.delete("/vms/{vm_id}")
def destroy_vm(vm_id: VmId, request: Request) -> VmView:
    """Destroy the VM and everything it holds (a user's CLI VM's tokens were written back
    after its last run)."""
    _vm(request, vm_id)
    controller(request).vms.destroy(vm_id)
    return vm_view(_vm(request, vm_id))


# -- sign-in sessions ----------------------------------------------------------------------


@router.get("/sessions")
def list_sessions(
    request: Request,
    status: AuthSessionStatus | None = None,
    provider: Annotated[str | None, Query(pattern=PROVIDER_PATTERN)] = None,
    user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SessionList:
    ctl = controller(request)
    found = inventory.sessions(ctl, status, provider, user_id, limit)
    return SessionList(sessions=[session_view(ctl.sessions, s) for s in found])


@router.post("/sessions/{session_id}/cancel")
def cancel_session(session_id: SessionId, request: Request) -> SessionView:
    """Cancel a running sign-in (an ended one stays as it ended)."""
    svc = controller(request).sessions
    if svc.get(session_id) is None:
        raise HTTPException(404, f"no auth session {session_id}")
    session = svc.cancel(session_id)
    return session_view(svc, session)


# -- users ---------------------------------------------------------------------------------


def user_summary(request: Request, user_id: str, prompts: int) -> UserSummary:
    ctl = controller(request)
    vm = ctl.cli_vms.vm_of(user_id)
    return UserSummary(
        user_id=user_id,
        credentials=[credential_view(i) for i in ctl.credentials.of_user(user_id)],
        vm=UserVm(vm_id=vm.id, state=vm.state) if vm else None,
        prompts=[PromptSummary(**prompt_summary(p)) for p in ctl.prompts.history(user_id, prompts)],
    )


@router.get("/users")
def list_users(request: Request) -> UserList:
    """Every user Hearth holds anything for, with their providers, CLI VM and last prompts."""
    return UserList(
        users=[user_summary(request, u, 5) for u in inventory.users(controller(request))]
    )


@router.get("/users/{user_id}")
def get_user(
    user_id: UserId, request: Request, prompts: Annotated[int, Query(ge=1, le=500)] = 50
) -> UserSummary:
    if user_id not in inventory.users(controller(request)):
        raise HTTPException(404, f"unknown user {user_id!r}")
    return user_summary(request, user_id, prompts)


# -- the host ------------------------------------------------------------------------------


@router.get("/host")
def host(request: Request) -> HostView:
    """Memory (the host's, what running VMs' guests take, and the VMs' memory budget with
    what is reserved of it, as admission counts them), VMs by state, the IP pool."""
    return HostView(**asdict(inventory.host_resources(controller(request))))


# -- API keys ------------------------------------------------------------------------------


def key_view(record: ApiKey) -> KeyView:
    return KeyView(
        key_id=record.id,
        role=record.role,
        name=record.name,
        created_at=record.created_at.isoformat(),
        revoked_at=record.revoked_at.isoformat() if record.revoked_at else None,
    )


@router.get("/keys")
def list_keys(request: Request) -> KeyList:
    return KeyList(keys=[key_view(k) for k in keys.list_keys(controller(request).db)])


@router.post("/keys", status_code=201)
def create_key(body: KeyRequest, request: Request) -> KeyCreated:
    db = controller(request).db
    key = keys.create_key(db, body.role, body.name)
    record = next(k for k in keys.list_keys(db) if key.startswith(f"hth_{k.id}_"))
    return KeyCreated(**key_view(record).model_dump(), key=key)


@router.delete("/keys/{key_id}")
def revoke_key(
    key_id: KeyId, request: Request, caller: Annotated[ApiKey, Depends(require_admin)]
) -> KeyView:
    """Revoke a key; not the one this request carries (that would lock its holder out)."""
    if key_id == caller.id:
        raise HTTPException(409, "this is the key of this request: revoke it with another")
    record = keys.revoke_key(controller(request).db, key_id)
    if record is None:
        raise HTTPException(404, f"no API key {key_id}")
    return key_view(record)


# -- webhooks ------------------------------------------------------------------------------


def endpoint_view(endpoint: EndpointInfo) -> WebhookEndpointView:
    return WebhookEndpointView(
        endpoint_id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        enabled=endpoint.enabled,
        created_at=endpoint.created_at.isoformat(),
        updated_at=endpoint.updated_at.isoformat(),
    )


def delivery_view(delivery: outbox.DeliveryInfo) -> WebhookDeliveryView:
    return WebhookDeliveryView(
        delivery_id=delivery.id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        status=delivery.status,
        next_attempt_at=_iso(delivery.next_attempt_at),
        delivered_at=_iso(delivery.delivered_at),
        created_at=delivery.created_at.isoformat(),
        attempts=[
            WebhookAttemptView(
                number=a.number,
                started_at=a.started_at.isoformat(),
                duration_seconds=round(a.duration_seconds, 3),
                status_code=a.status_code,
                error=a.error,
            )
            for a in delivery.attempts
        ],
    )


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def _endpoint(request: Request, endpoint_id: str) -> EndpointInfo:
    endpoint = controller(request).webhooks.get(endpoint_id)
    if endpoint is None:
        raise HTTPException(404, f"no webhook endpoint {endpoint_id}")
    return endpoint


@router.post("/webhooks", status_code=201)
def create_webhook(body: WebhookEndpointRequest, request: Request) -> WebhookEndpointCreated:
    """Register an endpoint for events; its signing secret is in this answer only."""
    endpoint, secret = controller(request).webhooks.create(
        body.url, [str(e) for e in body.events], body.description
    )
    return WebhookEndpointCreated(**endpoint_view(endpoint).model_dump(), secret=secret)


@router.get("/webhooks")
def list_webhooks(request: Request) -> WebhookEndpointList:
    return WebhookEndpointList(
        endpoints=[endpoint_view(e) for e in controller(request).webhooks.list()]
    )


@router.get("/webhooks/{endpoint_id}")
def get_webhook(endpoint_id: EndpointId, request: Request) -> WebhookEndpointView:
    return endpoint_view(_endpoint(request, endpoint_id))


@router.patch("/webhooks/{endpoint_id}")
def update_webhook(
    endpoint_id: EndpointId, body: WebhookEndpointUpdate, request: Request
) -> WebhookEndpointView:
    """Disable an endpoint (no new events; its pending deliveries wait) or enable it again."""
    _endpoint(request, endpoint_id)
    return endpoint_view(controller(request).webhooks.set_enabled(endpoint_id, body.enabled))


@router.delete("/webhooks/{endpoint_id}")
def delete_webhook(endpoint_id: EndpointId, request: Request) -> WebhookEndpointView:
    """Remove an endpoint, with its deliveries and their attempts; what it was."""
    endpoint = _endpoint(request, endpoint_id)
    if not controller(request).webhooks.delete(endpoint_id):
        raise HTTPException(404, f"no webhook endpoint {endpoint_id}")
    return endpoint_view(endpoint)


@router.get("/webhooks/{endpoint_id}/deliveries")
def list_deliveries(
    endpoint_id: EndpointId,
    request: Request,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> WebhookDeliveryList:
    """The endpoint's deliveries, newest first, each with every attempt and its outcome."""
    _endpoint(request, endpoint_id)
    found = outbox.deliveries(controller(request).db, endpoint_id, status, limit)
    return WebhookDeliveryList(deliveries=[delivery_view(d) for d in found])
