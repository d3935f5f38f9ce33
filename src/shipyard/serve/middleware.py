"""The serving middleware: request metrics, model headers, and the lean dispatch of the hot
routes past FastAPI's router (their FastAPI definitions still make the OpenAPI schema)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from shipyard.serve.http import error_response, too_large
from shipyard.serve.inputs import (
    RequestError,
)
from shipyard.serve.server import Server

if TYPE_CHECKING:
    pass


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- middleware ---------------------------------------------------------------------------------


#: a lean route: the route template (the metrics label) and the handler, path params bound
LeanMatch = tuple[str, Callable[[Request], Awaitable[Response]]]


class LeanRoutes:
    """The hot routes — ``POST /predict``, ``/predict/upload`` and the V2 ``infer`` paths —
    dispatched straight from :class:`ServeMiddleware`, past Starlette's router and FastAPI's
    per-request machinery (route matching over every route, ``get_request_handler``, the
    dependency solver, the exception-handler wrapper). A py-spy profile of the digits server
    at 32 clients put that machinery at about a quarter of the busy samples; the handlers
    themselves take a bare :class:`Request`, so FastAPI added nothing but cost.

    The FastAPI route definitions stay registered, unchanged: they generate the OpenAPI
    schema (paths, bodies, responses, examples), and anything this matcher does not take —
    another method, a trailing slash, ``HEAD`` — still goes through FastAPI's router and
    answers exactly as before (405, 404, redirect). The handlers are the very functions the
    FastAPI routes call; refusals are rendered by the same code as the app's
    ``RequestError`` handler, and anything else propagates to the same 500 handler.
    """

    def __init__(self) -> None:
        self.exact: dict[str, Callable[[Request], Awaitable[Response]]] = {}
        self.infer: Callable[[Request, str, str | None], Awaitable[Response]] | None = None

    def match(self, path: str) -> LeanMatch | None:
        handler = self.exact.get(path)
        if handler is not None:
            return path, handler
        infer = self.infer
        if infer is None or not path.startswith("/v2/models/") or not path.endswith("/infer"):
            return None
        # Starlette's ``{param}`` matches ``[^/]+``: the same segments, split once.
        parts = path.split("/")
        if len(parts) == 5 and parts[3]:
            name = parts[3]
            return "/v2/models/{model_name}/infer", lambda r: infer(r, name, None)
        if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
            name, version = parts[3], parts[5]
            return (
                "/v2/models/{model_name}/versions/{model_version}/infer",
                lambda r: infer(r, name, version),
            )
        return None


class ServeMiddleware:
    """Pure ASGI (no per-request task or body copy, unlike BaseHTTPMiddleware): counts and
    times every request by route template, refuses a declared oversized body with 413
    before routing, and adds the serving model's headers to responses that lack them.
    ``POST`` to a hot route is answered here directly (:class:`LeanRoutes`)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        server: Server,
        fastapi: FastAPI,
        lean: LeanRoutes | None = None,
    ) -> None:
        self.app = app
        self.server = server
        self.fastapi = fastapi
        self.lean = lean
        # Prometheus children by label values: ``.labels(...)`` takes a lock and builds a
        # key on every call; the label sets are few (route templates x methods x statuses).
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        server = self.server
        route: str | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                model = server.holder.current
                headers = message.get("headers", [])
                if model is not None and not any(k.lower() == b"x-model-name" for k, _ in headers):
                    headers = list(headers)
                    headers.append((b"x-model-name", model.name.encode()))
                    headers.append((b"x-model-version", model.version.encode()))
                    message["headers"] = headers
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            limit = server.settings.max_body_bytes
            if declared is not None and declared.isdigit() and int(declared) > limit:
                error = too_large(int(declared), limit)
                server.metrics.errors.labels(error.kind).inc()
                await error_response(error)(scope, receive, send_with_headers)
                return
            lean = (
                self.lean.match(scope["path"]) if self.lean and scope["method"] == "POST" else None
            )
            if lean is None:
                await self.app(scope, receive, send_with_headers)
                return
            route, handler = lean
            try:
                response = await handler(Request(scope, receive))
            except RequestError as exc:  # as the app's RequestError handler does
                server.metrics.errors.labels(exc.kind).inc()
                response = error_response(exc)
            await response(scope, receive, send_with_headers)
        finally:
            if route is None:
                route = self._route(scope)
            key = (route, scope["method"], status)
            counter = self._request_children.get(key)
            if counter is None:
                counter = self._request_children[key] = server.metrics.requests.labels(
                    route, scope["method"], str(status)
                )
            counter.inc()
            latency = self._latency_children.get(route)
            if latency is None:
                latency = self._latency_children[route] = server.metrics.latency.labels(route)
            latency.observe(time.perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        """The route template (``/v2/models/{model_name}``), never the raw path, so that
        metric labels stay few whatever clients send."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        from starlette.routing import Match

        for candidate in self.fastapi.router.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
