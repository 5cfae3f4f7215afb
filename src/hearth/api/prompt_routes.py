"""The prompt API: run a prompt through a user's CLI as Server-Sent Events, follow, cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from hearth.api.deps import PROVIDERS, USER_ID_PATTERN, UserId, controller, require_key
from hearth.api.schemas import (
    PromptCancelling,
    PromptConnected,
    PromptDone,
    PromptFailed,
    PromptHistory,
    PromptOutput,
    PromptSummary,
    PromptView,
)
from hearth.api.sse import EventStream
from hearth.core.prompts import Prompts
from hearth.store.models import Prompt

MAX_PROMPT_CHARS = 32_000
KEEPALIVE_SECONDS = 15.0
PromptId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="32 hex digits")]

EVENTS = EventStream(
    "the run as it happens: `connected`, `output` as the CLI prints, then `done` or `error`",
    {
        "connected": PromptConnected,
        "output": PromptOutput,
        "done": PromptDone,
        "error": PromptFailed,
    },
)

router = APIRouter(prefix="/api", tags=["prompts"], dependencies=[Depends(require_key)])


class PromptRequest(BaseModel):
    user_id: str = Field(pattern=USER_ID_PATTERN)
    provider: str = Field(max_length=64, json_schema_extra=PROVIDERS)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


def prompts(request: Request) -> Prompts:
    return controller(request).prompts


def prompt_summary(record: Prompt) -> dict:
    return {
        "prompt_id": record.id,
        "user_id": record.user_id,
        "provider": record.provider,
        "status": record.status,
        "exit_code": record.exit_code,
        "error": record.error,
        "vm_id": record.vm_id,
        "first_output_seconds": record.first_output_seconds,
        "duration_seconds": record.duration_seconds,
        "created_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "prompt": record.prompt,
    }


@router.post(
    "/prompts",
    response_class=StreamingResponse,
    responses=EVENTS.responses(),
)
async def run(body: PromptRequest, request: Request) -> StreamingResponse:
    """Run the prompt; events `connected`, `output` ({stream, data}) as the CLI prints, then
    `done` ({exit_code, duration, credentials}) or `error` ({reason}). 503 with Retry-After
    when the user's CLI VM cannot be woken for lack of room, 429 when the user runs as many
    prompts as they may."""
    svc = prompts(request)
    try:  # UnknownUser (404), NoCredentials (409), TooManyPrompts (429): as hearth.errors says
        record = await asyncio.to_thread(svc.create, body.user_id, body.provider, body.prompt)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    events = svc.stream(record.id)
    first = await asyncio.to_thread(next, events)  # after admission: NoCapacity answers 503
    return StreamingResponse(
        _events(svc, record.id, events, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Prompt-Id": record.id},
    )


async def _events(
    svc: Prompts, prompt_id: str, events: Iterator[tuple[str, dict]], first: tuple[str, dict]
) -> AsyncIterator[str]:
    """The run's events (`first`, then the rest of `events`), from its thread (the work is
    blocking) to the client. A client that goes away stops the CLI: the run is cancelled,
    and its record says why."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict] | None] = asyncio.Queue()
    queue.put_nowait(first)

    def pump() -> None:
        try:
            for event in events:
                loop.call_soon_threadsafe(queue.put_nowait, event)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, daemon=True, name=f"prompt-{prompt_id}").start()
    finished = False
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if item is None:
                finished = True
                return
            yield EVENTS.encode(*item)
    finally:
        if not finished:  # no await here: the stream's task may be cancelled already
            threading.Thread(
                target=svc.cancel, args=(prompt_id, "the client disconnected"), daemon=True
            ).start()


@router.get("/prompts/{prompt_id}")
def status(prompt_id: PromptId, request: Request) -> PromptView:
    record = prompts(request).get(prompt_id)
    if record is None:
        raise HTTPException(404, f"no prompt {prompt_id}")
    return PromptView(**prompt_summary(record), output=record.output)


@router.post("/prompts/{prompt_id}/cancel", status_code=202)
def cancel(prompt_id: PromptId, request: Request) -> PromptCancelling:
    svc = prompts(request)
    record = svc.get(prompt_id)
    if record is None:
        raise HTTPException(404, f"no prompt {prompt_id}")
    if not svc.cancel(prompt_id):
        raise HTTPException(409, f"prompt {prompt_id} is not running (status {record.status})")
    return PromptCancelling(prompt_id=prompt_id, status="cancelling")


@router.get("/users/{user_id}/prompts")
def history(
    user_id: UserId, request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> PromptHistory:
    records = prompts(request).history(user_id, limit)
    return PromptHistory(
        user_id=user_id, prompts=[PromptSummary(**prompt_summary(r)) for r in records]
    )
