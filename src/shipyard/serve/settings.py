"""The server's settings: one flat object, read from ``SHIPYARD_SERVE_*`` environment variables.

``shipyard serve`` composes the ``serve:`` section of the config (plus its flags and
overrides) into :class:`ServeSettings` and hands it to uvicorn's workers *through the
environment* (:meth:`ServeSettings.to_env`): a worker is a fresh process that only sees
its environment, and a container or ``uvicorn --factory shipyard.serve.app:create_app_from_env``
is configured the same way, with no config file. Each field ``x`` is the variable
``SHIPYARD_SERVE_X`` and the config key ``serve.x``: one name in three places.

The admin token is the exception: it is a secret, so it is read only from
``SHIPYARD_ADMIN_TOKEN`` and is never written into the config, a log or the environment
of anything but the workers (which inherit it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shipyard.errors import ConfigError

ENV_PREFIX = "SHIPYARD_SERVE_"
ADMIN_TOKEN_ENV = "SHIPYARD_ADMIN_TOKEN"
MIB = 1 << 20


class ServeSettings(BaseSettings):
    """Everything a worker needs to serve: what to load, limits, batching, logging, reload."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True
    )

    # -- what to serve -----------------------------------------------------------------
    #: a registry reference, NAME@ALIAS (digits@champion), NAME@VERSION or NAME/VERSION;
    #: reload polls it and rollback moves its alias
    model: str | None = None
    #: a model package folder to load; when ``model`` is set too, this is the already
    #: resolved, verified local copy of it (``shipyard serve`` resolves once, so workers
    #: start without asking the registry)
    package: str | None = None
    #: the name reported in responses, headers and /v2/models/NAME; default: the registry's,
    #: or for a bare package folder the data's name (digits, wine)
    model_name: str | None = None
    #: the registry version of ``package`` when ``shipyard serve`` resolved ``model`` to it;
    #: a bare package folder's version is ``pkg-<manifest sha256[:12]>``, unless this is set
    #: together with ``package_digest`` (a serve image records both at build time)
    model_version: str | None = None
    #: the SHA-256 of the manifest that ``model_version`` belongs to (bare folders only)
    package_digest: str | None = None
    #: which graph of the package: fp32 or int8
    precision: Literal["fp32", "int8"] = "fp32"
    #: config overrides (``tracking.uri=...``) for registry access from the workers
    config_overrides: list[str] = Field(default_factory=list)
    #: ``$SHIPYARD_HOME`` of the server (prediction log, registry cache); default: the env's
    home: str | None = None

    # -- network (the CLI passes these to uvicorn; workers use them in their log line) ----
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    access_log: bool = False
    graceful_timeout_s: float = Field(default=30.0, ge=0)

    # -- ONNX Runtime and batching --------------------------------------------------------
    #: 0: auto (``runtime.auto_threads``: one for a light graph, the cores for a heavy one)
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=1, ge=1)
    max_batch_size: int = Field(default=128, ge=1)
    max_wait_ms: float = Field(default=0.0, ge=0)
    max_queue_rows: int = Field(default=1024, ge=1)

    # -- request limits -------------------------------------------------------------------
    max_instances: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=16 * MIB, ge=1024)
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    max_upload_files: int = Field(default=64, ge=1)
    #: text models: truncate a text over the model's max_length tokens (as training did);
    #: false refuses it with a 413 that names the limit
    text_truncate: bool = True

    # -- hot reload -------------------------------------------------------------------------
    #: seconds between polls of the registry alias; 0 = no polling
    reload_interval_s: float = Field(default=0.0, ge=0)

    # -- prediction log ----------------------------------------------------------------------
    prediction_log: bool = True
    #: SQLAlchemy URL; default ``sqlite:///<home>/predictions.db``
    prediction_log_url: str | None = None
    #: where rows wait while the database is down; default ``<home>/predictions-spool``
    prediction_log_spool: str | None = None
    prediction_log_queue_size: int = Field(default=10_000, ge=1)
    prediction_log_batch_size: int = Field(default=256, ge=1)
    prediction_log_flush_interval_s: float = Field(default=0.5, gt=0)
    prediction_log_retry_interval_s: float = Field(default=5.0, gt=0)

    # -- monitoring ---------------------------------------------------------------------------
    #: seconds between refreshes of the live metric and the drift gauges; 0: no monitoring
    #: in the server (``shipyard monitor`` still works on the log)
    monitor_interval_s: float = Field(default=10.0, ge=0)
    #: the rest come from the config's ``monitor:`` section (``shipyard serve`` copies
    #: ``monitor.x`` into ``monitor_x``): how often the server runs the drift check in a
    #: background process (0: never), and the live metric's window, margins and minimum
    monitor_drift_interval_s: float = Field(default=0.0, ge=0)
    monitor_accuracy_window: int = Field(default=500, ge=1)
    monitor_accuracy_margin: float = Field(default=0.05, ge=0)
    monitor_mae_margin: float | None = Field(default=None, ge=0)
    monitor_accuracy_min_samples: int = Field(default=30, ge=1)
    # -- admin -------------------------------------------------------------------------------
    #: bearer token for /admin/*; unset disables the routes. Only from SHIPYARD_ADMIN_TOKEN.
    admin_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices(ADMIN_TOKEN_ENV), exclude=True
    )

    @field_validator("config_overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment carries a JSON list
            return json.loads(value) if value.strip().startswith("[") else value.split()
        return [] if value is None else value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token(cls, value: Any) -> Any:
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    @model_validator(mode="after")
    def _something_to_serve(self) -> ServeSettings:
        if not self.model and not self.package:
            raise ValueError(
                "nothing to serve: give a registry reference (shipyard serve digits@champion, "
                f"{ENV_PREFIX}MODEL) or a package folder (--package DIR, {ENV_PREFIX}PACKAGE)"
            )
        return self

    # -- derived ---------------------------------------------------------------------------

    @property
    def home_path(self) -> Path:
        from shipyard.settings import shipyard_home

        return Path(self.home).expanduser().resolve() if self.home else shipyard_home()

    @property
    def spool_path(self) -> Path:
        if self.prediction_log_spool:
            return Path(self.prediction_log_spool).expanduser()
        return self.home_path / "predictions-spool"

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None

    def to_env(self) -> dict[str, str]:
        """The settings as ``SHIPYARD_SERVE_*`` variables (None omitted, lists as JSON), so
        that a worker process rebuilds exactly this object with ``ServeSettings()``."""
        env: dict[str, str] = {}
        for key, value in self.model_dump(exclude={"admin_token"}).items():
            if value is None:
                continue
            if isinstance(value, list):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{key.upper()}"] = text
        return env

    @classmethod
    def env_names(cls) -> list[str]:
        """Every ``SHIPYARD_SERVE_*`` name (to clear stale ones before exporting new)."""
        return [f"{ENV_PREFIX}{key.upper()}" for key in cls.model_fields if key != "admin_token"]


def load_settings(**values: Any) -> ServeSettings:
    """:class:`ServeSettings` from ``values`` over the environment, with pydantic's error
    turned into one line that names the key (``serve.max_batch_size`` / its variable)."""
    from pydantic import ValidationError

    try:
        return ServeSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        where = f"serve.{key} ({ENV_PREFIX}{key.upper()})" if key else "serve"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid server setting {where}: {message}") from None
