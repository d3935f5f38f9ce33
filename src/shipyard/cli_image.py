"""``shipyard image build|context``: a registered model as a container image.

Kept beside ``cli.py`` (which imports this module at its end to add the commands).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli import JsonFlag, Overrides, _compose, _emit, _kv_table, _working, app, out

image_app = typer.Typer(
    help="Container images of registered models: build one, or stage its build context.",
    no_args_is_help=True,
)
app.add_typer(image_app, name="image")

RefArgument = Annotated[
    str,
    typer.Argument(
        help="Registered model: NAME@ALIAS (digits@champion), NAME@VERSION or NAME/VERSION.",
        show_default=False,
    ),
]
TagOption = Annotated[
    str | None,
    typer.Option(
        "--tag",
        "-t",
        help="Image reference (default shipyard-serve:NAME-VERSION, e.g. shipyard-serve:digits-3).",
        show_default=False,
    ),
]


def _fetch(overrides: list[str] | None, ref: str, tag: str | None) -> tuple[Any, Any, str]:
    """The verified package of ``ref``, its registry info, and the image reference."""
    from shipyard.images import check_reference, image_tag
    from shipyard.track.registry import fetch_package

    if tag:
        check_reference(tag)  # before any download
    cfg = _compose(overrides)
    package, info = fetch_package(cfg, ref)
    return package, info, tag or image_tag(info.name, info.version)


@image_app.command("build")
def image_build(
    ref: RefArgument,
    overrides: Overrides = None,
    tag: TagOption = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="podman or docker (default: whichever is installed)."),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base image (default $SHIPYARD_IMAGE_BASE, else python:3.11-slim). Without a "
            "registry: scripts/base-image.sh builds localhost/python:3.11-slim.",
            show_default=False,
        ),
    ] = None,
    extras: Annotated[
        str,
        typer.Option(
            "--extras",
            help="Shipyard extras to install: serve, plus s3 to serve NAME@ALIAS from a "
            "registry whose artifacts live in an S3 bucket (serve,s3).",
        ),
    ] = "serve",
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle",
            help="A CA bundle that pip inside the build must trust (a TLS-intercepting proxy), "
            "mounted read-only for the build only, never copied into the image (podman).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build a serve image with a registered model inside, tagged with its name and version.

    The package is fetched and verified first; the image is torch-free, runs as a non-root
    user, works with a read-only root filesystem and reports health from /v2/health/ready.
    Examples: `shipyard image build digits@champion` ·
    `shipyard image build wine@3 -t ghcr.io/acme/wine:v3 --engine docker` ·
    run it: `docker run --read-only --tmpfs /tmp -p 127.0.0.1:8000:8000 shipyard-serve:digits-3`
    """
    from shipyard.images import DEFAULT_BASE, build, find_engine, stage_context

    with _working(as_json):
        package, info, reference = _fetch(overrides, ref, tag)
        chosen = find_engine(engine)
        with tempfile.TemporaryDirectory(prefix="shipyard-image-") as scratch:
            context = stage_context(
                package.path,
                Path(scratch) / "context",
                name=info.name,
                version=info.version,
                tag=reference,
            )
            result = build(
                chosen,
                context,
                base=base or os.environ.get("SHIPYARD_IMAGE_BASE") or DEFAULT_BASE,
                extras=extras,
                ca_bundle=ca_bundle,
            )
    result = {"name": info.name, "version": info.version, "engine": chosen, **result}
    _emit(result, as_json, _print_build)


def _print_build(result: dict[str, Any]) -> None:
    rows = {
        "image": result["tag"],
        "model": f"{result['name']} v{result['version']}",
        "size": f"{result['size_bytes'] / 2**20:.0f} MiB",
        "id": result["id"][:19],
    }
    out.print(_kv_table("Image built", rows))
    out.print(
        f"Run it: {result['engine']} run --rm --read-only --tmpfs /tmp "
        f"-p 127.0.0.1:8000:8000 {result['tag']}",
        highlight=False,
        soft_wrap=True,
    )


@image_app.command("context")
def image_context(
    ref: RefArgument,
    destination: Annotated[
        Path, typer.Argument(help="A new (or empty) folder for the build context.")
    ],
    overrides: Overrides = None,
    tag: TagOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Stage a serve image's build context without building it: the project, the verified
    package under model/ and the Dockerfile -- for CI's builder (buildx, kaniko) or a machine
    with the engine but without the registry.

    Example: `shipyard image context digits@champion build/ctx && docker build -t
    shipyard-serve:digits-3 build/ctx`
    """
    from shipyard.images import stage_context

    with _working(as_json):
        package, info, reference = _fetch(overrides, ref, tag)
        context = stage_context(
            package.path, destination, name=info.name, version=info.version, tag=reference
        )
    result = {
        "name": info.name,
        "version": info.version,
        "context": str(context.path.resolve()),
        "tag": reference,
        "build_args": context.build_args,
    }
    _emit(
        result,
        as_json,
        lambda r: out.print(
            f"Build context for {r['name']} v{r['version']}: [bold]{r['context']}[/]\n"
            "Build it: docker build "
            + " ".join(f"--build-arg {k}={v}" for k, v in r["build_args"].items())
            + f" -t {r['tag']} {r['context']}",
            highlight=False,
            soft_wrap=True,
        ),
    )
