"""A model package is verified on load: any change after export is refused in one line.

The package is a real export of a briefly trained wine run; each test damages its own copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.config import compose
from shipyard.export.build import export_run
from shipyard.export.package import MANIFEST, ModelPackage, PackageError, load_package
from shipyard.train.run import train


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelPackage]:
    home = tmp_path_factory.mktemp("package") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_HOME", str(home))
        cfg = compose(
            [
                "task=tabular",
                "trainer.max_epochs=1",
                "trainer.early_stopping_patience=null",
                "export.latency.repeats=2",
                "export.latency.batch_sizes=[1,8]",
            ]
        )
        yield export_run(cfg, train(cfg).run_id).package


@pytest.fixture
def copy(package: ModelPackage, tmp_path: Path) -> Path:
    """A copy of the exported package that a test may damage."""
    return Path(shutil.copytree(package.path, tmp_path / "package"))


def one_line_error(path: Path) -> str:
    with pytest.raises(PackageError) as raised:
        load_package(path)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_an_exported_package_loads_and_verifies(package: ModelPackage, copy: Path) -> None:
    loaded = load_package(copy)

    assert loaded.manifest == package.manifest
    assert loaded.graph_path("fp32") == copy / "model.onnx"
    assert loaded.graph_path("int8") == copy / "model.int8.onnx"
    assert sorted(loaded.manifest.graph("fp32").latency) == [1, 8]
    assert not list(package.path.parent.glob(".*"))  # no staging or .old folder left


def test_an_altered_graph_is_refused_naming_the_file(copy: Path) -> None:
    with (copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")

    message = one_line_error(copy)
    assert "model.onnx does not match its checksum" in message
    assert "shipyard export run=RUN_ID" in message
    load_package(copy, verify=False)  # the manifest itself is fine


def test_an_altered_report_is_refused_too(copy: Path) -> None:
    (copy / "report.html").write_text("<p>something else</p>")
    assert "report.html does not match its checksum" in one_line_error(copy)


def test_a_missing_file_is_named(copy: Path) -> None:
    (copy / "model.int8.onnx").unlink()
    assert "is missing model.int8.onnx" in one_line_error(copy)


def test_invalid_json_wrong_format_and_invalid_manifest(copy: Path) -> None:
    manifest = copy / MANIFEST
    data = json.loads(manifest.read_text())

    manifest.write_text("{not json")
    assert "is not valid JSON" in one_line_error(copy)

    manifest.write_text(json.dumps(data | {"format": 99}))
    assert "package format 99; this Shipyard reads format 1" in one_line_error(copy)

    manifest.write_text(json.dumps({k: v for k, v in data.items() if k != "parity"}))
    assert "is not a valid manifest (parity: Field required)" in one_line_error(copy)

    manifest.write_text(json.dumps(data | {"files": {"../../etc/passwd": "0" * 64}}))
    assert "names a file outside the package" in one_line_error(copy)


def test_a_folder_that_is_not_a_package(tmp_path: Path) -> None:
    assert "no such folder" in one_line_error(tmp_path / "nowhere")
    assert f"no {MANIFEST} in it" in one_line_error(tmp_path)
