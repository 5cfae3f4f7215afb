"""`GET /metrics`: the controller's Prometheus metrics (hearth.metrics), for admin keys."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hearth import metrics
from hearth.api.deps import controller, require_admin

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_admin)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def scrape(request: Request) -> Response:
    """The Prometheus text format: sign-ins, boots and resumes, VMs, IP leases, prompts,
    credential write-backs, egress, failed plan steps, the queue, admissions refused, the
    VMs' memory and the warm pool (the README lists them)."""
    text = generate_latest(metrics.registry(controller(request)))
    return Response(text, media_type=CONTENT_TYPE_LATEST)
