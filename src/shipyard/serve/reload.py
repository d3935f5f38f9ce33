"""The model being served, and swapping it safely: initial load, hot reload, rollback.

:class:`ModelHolder` holds one :class:`ServedModel` and replaces it with a single
reference assignment, so the batcher (which reads :meth:`ModelHolder.get` once per
batch) always runs a whole batch on one model and never sees a half-loaded one. A new
version is loaded *beside* the old — download, checksum verification,
:meth:`ServedModel.load` with its smoke prediction — and only a model that passed all of
it is swapped in. A version that fails any step is *refused*: logged, counted in
``shipyard_reloads_total{result="refused"}``, and the old model keeps serving.

A swap must not break callers either, so a version whose input (name, shape, columns) or
output kind differs from the served one is refused too: requests validated against one
input spec must not run on another model's graph. Restarting the server serves it.

Where the model comes from:

* a registry reference (``digits@champion``): the alias is resolved to a version number
  (one cheap registry call) and the package is fetched only when the number changed;
  :meth:`ModelHolder.start_polling` does that every ``reload_interval_s`` in a daemon
  thread — never on the event loop, since MLflow is synchronous — and ``/admin/reload``
  does it on demand;
* a package folder (``--package DIR``): reload re-reads the folder, and the version is
  ``pkg-`` + the first 12 hex digits of its manifest's SHA-256, so a re-exported
  package is a new version and an untouched one is "unchanged".

Every method here blocks (registry calls, ONNX Runtime session creation), so the app
calls them through ``asyncio.to_thread``. One lock serialises reloads: the poller and an
admin call never load the same version twice at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import UserError
from shipyard.export.package import (
    MANIFEST,
    TOKENIZER_FILE,
    Manifest,
    ModelPackage,
    load_package,
    sha256_file,
)
from shipyard.serve.runtime import ServedModel, auto_threads

if TYPE_CHECKING:
    from collections.abc import Callable

    from omegaconf import DictConfig

    from shipyard.serve.settings import ServeSettings

log = logging.getLogger("shipyard.serve")


class NotReady(UserError):
    """No model is loaded (yet): the server answers 503 until one is."""


class ReloadRefused(UserError):
    """A candidate version was not swapped in; the old model (if any) keeps serving."""


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``result`` is ``swapped`` or ``unchanged``."""

    result: str
    model: ServedModel
    previous: ServedModel | None
    detail: str


class ModelHolder:
    """The served model and everything that replaces it."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        on_swap: Callable[[ServedModel], None] | None = None,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_swap = on_swap
        self.on_result = on_result
        self._model: ServedModel | None = None
        self._lock = threading.RLock()  # rollback holds it across its own reload
        self._cfg: DictConfig | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._last_poll_error: str | None = None
        #: the reason the last reload was refused (None after a success), for /v2/health
        self.last_error: str | None = None

    # -- reading ---------------------------------------------------------------------------

    @property
    def current(self) -> ServedModel | None:
        return self._model

    def get(self) -> ServedModel:
        """The model to run a batch on (the batcher's ``get_model``)."""
        model = self._model
        if model is None:
            raise NotReady(
                "no model is loaded yet"
                + (f" (last attempt: {self.last_error})" if self.last_error else "")
            )
        return model

    @property
    def ready(self) -> bool:
        return self._model is not None

    # -- loading -----------------------------------------------------------------------------

    def load_initial(self) -> ServedModel:
        """The first model. With ``package`` *and* ``model`` set, ``shipyard serve`` already
        resolved and verified the reference: load the folder under the registry's name and
        version without asking the registry again (a worker starts in well under a second)."""
        settings = self.settings
        with self._lock:
            if settings.package:
                package = load_package(settings.package)
                name, version = self._package_identity(package)
            else:
                package, name, version = self._fetch(None)
            model = self._load(package, name, version)
            self._swap(model)
            return model

    def reload(self) -> ReloadOutcome:
        """Resolve the source again and swap in a new version if there is one.

        Raises :class:`ReloadRefused` (the old model keeps serving) when the new version
        cannot be fetched, verified, loaded or smoke-tested, or would break callers.
        """
        with self._lock:
            previous = self._model
            try:
                outcome = self._reload_locked(previous)
            except UserError as exc:
                message = str(exc)
                self.last_error = message
                self._count("refused")
                keeps = f"; still serving {previous.name} v{previous.version}" if previous else ""
                log.warning("reload refused: %s%s", message, keeps)
                raise ReloadRefused(f"reload refused: {message}{keeps}") from None
            self.last_error = None
            self._count(outcome.result)
            return outcome

    def _reload_locked(self, previous: ServedModel | None) -> ReloadOutcome:
        settings = self.settings
        if settings.model:
            package, name, version = self._fetch(previous)
            if package is None:
                assert previous is not None
                return ReloadOutcome(
                    "unchanged", previous, previous, f"still serving {name} v{version}"
                )
        else:
            assert settings.package
            package = load_package(settings.package)  # verifies every checksum
            name, version = self._package_identity(package)
            if previous is not None and previous.version == version:
                return ReloadOutcome(
                    "unchanged", previous, previous, f"still serving {name} v{version}"
                )
        if previous is not None:
            check_compatible(previous.manifest, package.manifest, f"{name} v{version}", previous)
        model = self._load(package, name, version)
        self._swap(model)
        was = f" (was v{previous.version})" if previous else ""
        log.info("now serving %s v%s%s", name, version, was)
        return ReloadOutcome("swapped", model, previous, f"now serving {name} v{version}{was}")

    def rollback(self, reason: str | None = None) -> ReloadOutcome:
        """Move the registry's ``champion`` back one step (:func:`shipyard.track.registry.rollback`),
        then reload. Only for a server that follows ``NAME@champion``."""
        from shipyard.track.registry import rollback
        from shipyard.track.versions import CHAMPION, parse_ref

        ref = self.settings.model
        if not ref:
            raise UserError(
                "rollback needs a registry model: this server serves a package folder; start it "
                "with `shipyard serve NAME@champion`"
            )
        name, selector = parse_ref(ref)
        if selector != CHAMPION:
            raise UserError(
                f"rollback moves {name}@{CHAMPION}, but this server serves {ref}: start it with "
                f"`shipyard serve {name}@{CHAMPION}`"
            )
        with self._lock:  # the poller must not reload between the alias move and ours
            rollback(self.config(), name, reason=reason or "rollback from the admin API")
            return self.reload()

    # -- polling -------------------------------------------------------------------------------

    def start_polling(self) -> None:
        """Every ``reload_interval_s``, reload in a daemon thread (0: never; package folders
        are polled too, so a re-exported folder is picked up)."""
        interval = self.settings.reload_interval_s
        if interval <= 0 or self._poller is not None:
            return
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll, args=(interval,), name="shipyard-reload", daemon=True
        )
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.join(timeout=10)

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload()
                self._last_poll_error = None
            except ReloadRefused as exc:
                self._log_poll_error(str(exc), already_logged=True)
            except Exception as exc:  # the registry down, a network error: keep polling
                self._log_poll_error(f"{type(exc).__name__}: {exc}", already_logged=False)

    def _log_poll_error(self, message: str, *, already_logged: bool) -> None:
        """Once per distinct error, not once per poll: a registry that stays down for an
        hour must not write 3,600 identical lines."""
        if message != self._last_poll_error and not already_logged:
            log.warning("registry poll failed (will retry): %s", message)
        self._last_poll_error = message

    # -- helpers ---------------------------------------------------------------------------------

    def config(self) -> DictConfig:
        """The composed config (tracking URI, home) for registry calls, made once."""
        if self._cfg is None:
            from shipyard.config import compose

            overrides = list(self.settings.config_overrides)
            if self.settings.home and not any(o.startswith("paths.home=") for o in overrides):
                overrides.append(f"paths.home={self.settings.home}")
            self._cfg = compose(overrides)
        return self._cfg

    def _fetch(
        self, current: ServedModel | None
    ) -> tuple[Any, str, str]:  # (ModelPackage | None, name, version)
        """Resolve the reference; ``(None, name, version)`` when ``current`` is that version
        already (nothing downloaded), else the verified package."""
        from shipyard.track import tracking
        from shipyard.track.versions import fetch_package, get_version, parse_ref

        ref = self.settings.model
        assert ref
        cfg = self.config()
        name, selector = parse_ref(ref)
        number = int(get_version(cfg, tracking.client(cfg), name, selector).version)
        if current is not None and current.name == name and current.version == str(number):
            return None, name, str(number)
        package, info = fetch_package(cfg, f"{name}/{number}")
        return package, info.name, str(info.version)

    def _package_identity(self, package: ModelPackage) -> tuple[str, str]:
        settings = self.settings
        name = settings.model_name or package_name(package.manifest)
        if settings.model and settings.model_version:  # resolved by `shipyard serve`
            return name, settings.model_version
        return name, package_version(package.path, settings.model_version, settings.package_digest)

    def _load(self, package: ModelPackage, name: str, version: str) -> ServedModel:
        return load_served(package, name, version, self.settings)

    def _swap(self, model: ServedModel) -> None:
        self._model = model  # one reference assignment: atomic for every reader
        if self.on_swap is not None:
            self.on_swap(model)

    def _count(self, result: str) -> None:
        if self.on_result is not None:
            self.on_result(result)


def check_compatible(
    served: Manifest, candidate: Manifest, what: str, previous: ServedModel
) -> None:
    """Refuse a candidate that callers of the served model could not call the same way."""
    old, new = served.input, candidate.input
    if (old.name, old.shape, old.columns) != (new.name, new.shape, new.columns):
        raise UserError(
            f"{what} takes input {new.name!r} shaped {new.shape}"
            + (f" with columns {new.columns}" if new.columns else "")
            + f", but v{previous.version} takes {old.name!r} shaped {old.shape}"
            + (f" with columns {old.columns}" if old.columns else "")
            + ": callers would break; restart the server to serve it"
        )
    if served.output_kind != candidate.output_kind:
        raise UserError(
            f"{what} predicts {candidate.output_kind}, but v{previous.version} predicts "
            f"{served.output_kind}: callers would break; restart the server to serve it"
        )
    if served.files.get(TOKENIZER_FILE) != candidate.files.get(TOKENIZER_FILE):
        # Requests are tokenised before they are batched: across a swap, ids made by one
        # tokenizer would run on the other model's graph.
        raise UserError(
            f"{what} tokenises texts differently from v{previous.version} (another "
            f"{TOKENIZER_FILE}): requests in flight would break; restart the server to serve it"
        )


def package_name(manifest: Manifest) -> str:
    """The name a bare package folder is served under: the data's name (digits, wine)."""
    from shipyard.track.registry import derive_name

    return derive_name(manifest)


def package_version(folder: Path, claimed: str | None = None, digest: str | None = None) -> str:
    """A bare folder's version: ``pkg-`` + the manifest's SHA-256 prefix, which changes
    exactly when the package does -- or ``claimed``, the registry version the folder was
    fetched as (a serve image records it), while the manifest still has that ``digest``:
    a different package mounted in its place never inherits the label."""
    actual = sha256_file(Path(folder) / MANIFEST)
    if claimed and digest and digest.lower() == actual:
        return claimed
    return f"pkg-{actual[:12]}"


def load_served(
    package: ModelPackage, name: str, version: str, settings: ServeSettings
) -> ServedModel:
    """Open ``package`` as the settings say (precision, ONNX Runtime threads), with its
    smoke check: what a worker loads, and what ``shipyard serve`` checks before it starts."""
    threads = settings.intra_op_threads or auto_threads(
        package, settings.precision, settings.workers
    )
    return ServedModel.load(
        package,
        name=name,
        version=version,
        precision=settings.precision,
        intra_op_threads=threads,
        inter_op_threads=settings.inter_op_threads,
    )
