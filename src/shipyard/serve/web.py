"""The web page at ``/``: try the model and watch it, served by the API itself."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>Shipyard</title><p>Shipyard model server</p>")
