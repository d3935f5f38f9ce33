"""The documentation site builds with ``mkdocs build --strict`` and has its key pages.

Strict mode turns every warning into a failure: a broken link or anchor, a page missing
from the nav, a docstring reference mkdocstrings cannot resolve. The CLI reference is
generated from the Typer app at build time (``scripts/gen_cli_docs.py``), so a new command
or option appears in it with no edit to the docs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_gen_files")


def missing_plugins() -> list[str]:
    found = []
    for name in PLUGINS:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            found.append(name)
    return found


pytestmark = pytest.mark.skipif(
    bool(missing_plugins()),
    reason=f"the docs toolchain is not installed (missing {', '.join(missing_plugins())}): "
    "pip install mkdocs-material 'mkdocstrings[python]' mkdocs-gen-files",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module with ``mkdocs build --strict``."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        problems or result.stderr.splitlines()[-30:]
    )
    return out


def page(site: Path, name: str) -> str:
    path = site / name / "index.html" if name else site / "index.html"
    assert path.is_file(), f"the site has no page {name or 'index'} ({path})"
    return path.read_text(encoding="utf-8")


def text_of(html: str) -> str:
    """The page's words without tags (code spans split commands into several elements)."""
    return " ".join(re.sub(r"<[^>]+>", "", html).split())


def test_site_has_the_key_pages(site: Path) -> None:
    assert "make run" in text_of(page(site, ""))
    quickstart = text_of(page(site, "quickstart"))
    for step in ("make run", "make test", "shipyard serve digits@champion", "curl"):
        assert step in quickstart, f"the quickstart does not show `{step}`"
    for name in (
        "tutorials/image-folder",
        "tutorials/csv-table",
        "tutorials/serving",
        "tutorials/scaling-out",
        "monitoring",
        "alerts",
        "load-testing",
        "configuration",
        "benchmarks",
        "architecture",
    ):
        page(site, name)


def test_cli_reference_is_generated_from_the_typer_app(site: Path) -> None:
    import typer.main

    from shipyard.cli import app

    reference = text_of(page(site, "reference/cli"))
    for command in ("shipyard serve", "shipyard monitor drift", "shipyard data prepare"):
        assert command in reference, f"the CLI reference does not mention `{command}`"
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="shipyard")
    missing = [name for name in root.list_commands(ctx) if f"shipyard {name}" not in reference]
    assert not missing, f"the CLI reference lacks the commands {missing}"
    assert "--workers" in reference  # options too, with their help
    assert "Worker processes" in reference


def test_api_reference_renders_the_docstrings(site: Path) -> None:
    from shipyard.export.package import load_package

    reference = text_of(page(site, "reference/api"))
    assert load_package.__doc__
    # Double backticks are Markdown code spans: the tags go, the words stay.
    first_line = load_package.__doc__.strip().splitlines()[0].replace("``", "")
    assert first_line in reference, "the API reference lacks load_package's docstring"
    for module in (
        "shipyard.export.package",
        "shipyard.track.registry",
        "shipyard.track.versions",
        "shipyard.serve.settings",
        "shipyard.monitor.accuracy",
        "shipyard.tasks.base",
    ):
        assert f'id="{module}"' in page(site, "reference/api"), f"no section for {module}"


def test_site_needs_no_network(site: Path) -> None:
    """No Google Fonts, no CDN: every stylesheet and script the pages load is local."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s+font: false$", config, flags=re.M), "set theme.font: false"
    remote = set()
    for html in site.rglob("*.html"):
        for tag in re.findall(r"<(?:link|script|img)\b[^>]*>", html.read_text(encoding="utf-8")):
            match = re.search(r'(?:href|src)="(https?:)?//([^"/]+)', tag)
            if match and 'rel="canonical"' not in tag:
                remote.add(f"{html.relative_to(site)}: {match.group(2)}")
    assert not remote, f"pages load remote resources: {sorted(remote)[:10]}"
