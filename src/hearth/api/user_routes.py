"""A user's credentials as seen from the CLI VM: what is stored, whether the CLI accepts it,
and removing it (from the store and from the VM)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from hearth import providers
from hearth.api.deps import ProviderName, UserId, controller, require_key
from hearth.api.schemas import (
    CredentialsRemoved,
    CredentialView,
    UserCredentials,
    UserVm,
    Validation,
)
from hearth.core.cli_vms import CliVms, ProviderUnreachable
from hearth.store.credentials import CredentialInfo, CredentialNotFound

router = APIRouter(prefix="/api", tags=["users"], dependencies=[Depends(require_key)])


def cli_vms(request: Request) -> CliVms:
    return controller(request).cli_vms


def _known_provider(provider: str) -> None:
    if provider not in providers.names():
        raise HTTPException(
            400, f"unknown provider {provider!r}; known: {', '.join(providers.names())}"
        )


def credential_view(info: CredentialInfo) -> CredentialView:
    return CredentialView(
        provider=info.provider,
        account_email=info.account_email,
        expires_at=info.expires_at.isoformat() if info.expires_at else None,
        version=info.version,
        updated_at=info.updated_at.isoformat(),
        status=info.status,
        invalid_reason=info.invalid_reason,
        invalid_at=info.invalid_at.isoformat() if info.invalid_at else None,
    )


@router.get("/users/{user_id}/credentials")
def credentials(user_id: UserId, request: Request) -> UserCredentials:
    svc = cli_vms(request)
    if not svc.known(user_id):
        raise HTTPException(404, f"unknown user {user_id!r}")
    vm = svc.vm_of(user_id)
    return UserCredentials(
        user_id=user_id,
        credentials=[credential_view(i) for i in svc.credentials.of_user(user_id)],
        vm=UserVm(vm_id=vm.id, state=vm.state) if vm else None,
    )


@router.delete("/users/{user_id}/credentials/{provider}")
def remove(user_id: UserId, provider: ProviderName, request: Request) -> CredentialsRemoved:
    _known_provider(provider)
    existed, wiped = cli_vms(request).remove(user_id, provider)
    if not existed and not wiped:
        raise HTTPException(404, f"user {user_id!r} has no {provider} credentials")
    return CredentialsRemoved(
        user_id=user_id, provider=provider, removed=existed, wiped_files=wiped
    )


@router.get("/auth/validate/{user_id}/{provider}")
def validate(user_id: UserId, provider: ProviderName, request: Request) -> Validation:
    """The verdict on the user's sign-in, from their CLI VM: the CLI's own status check and,
    where that reads only the CLI's files, the provider's answer (hearth.core.cli_vms.check).
    `valid` is null when only a refresh could tell; 502 when the provider gave no verdict."""
    _known_provider(provider)
    svc = cli_vms(request)
    if not providers.get(provider).status_argv:
        raise HTTPException(501, f"the {provider} CLI has no status check")
    if not svc.known(user_id):
        raise HTTPException(404, f"unknown user {user_id!r}")
    try:
        check = svc.check(user_id, provider)
    except CredentialNotFound as e:
        raise HTTPException(409, f"{e}: sign in first (POST /api/auth/start)") from None
    except ProviderUnreachable as e:
        raise HTTPException(502, str(e)) from None
    info = svc.credentials.info(user_id, provider)
    return Validation(
        user_id=user_id,
        provider=provider,
        valid=check.valid,
        reason=check.reason,
        status=info.status if info else "absent",
    )
