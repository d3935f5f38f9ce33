from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from shipyard.config import available, fingerprint, to_yaml
from shipyard.errors import ConfigError


def test_task_picks_its_default_data_and_model(compose: Callable[..., DictConfig]) -> None:
    image = compose("task=image")
    tabular = compose("task=tabular")
    assert (image.data.source, image.model.family) == ("digits", "cnn")
    assert (tabular.data.source, tabular.model.family) == ("wine", "mlp")


def test_any_key_is_overridable(compose: Callable[..., DictConfig]) -> None:
    cfg = compose(
        "task=tabular",
        "trainer.max_epochs=5",
        "model.lr=1e-3",
        "data=csv",
        "data.path=w.csv",
        "data.target=q",
    )
    assert cfg.trainer.max_epochs == 5
    assert cfg.model.lr == pytest.approx(1e-3)
    assert (cfg.data.source, cfg.data.format, cfg.data.target) == ("table", "csv", "q")
    assert cfg.data.val_fraction == pytest.approx(
        0.15
    )  # root data keys merge into the chosen source


def test_paths_follow_shipyard_home(compose: Callable[..., DictConfig], home: Path) -> None:
    cfg = compose()
    assert cfg.paths.home == str(home.resolve())
    assert cfg.paths.snapshots == f"{home.resolve()}/snapshots"


def test_timm_presets_inherit_the_timm_defaults(compose: Callable[..., DictConfig]) -> None:
    cfg = compose("model=resnet50")
    assert (cfg.model.family, cfg.model.arch, cfg.model.pretrained) == ("timm", "resnet50", True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=nope"], "unknown task 'nope': choose one of image, summarize, tabular, text"),
        (["model=nope"], "unknown model 'nope': choose one of cnn,"),
        (["data=nope"], "unknown data 'nope'"),
        (["trainer.bogus=1"], "unknown config key 'trainer.bogus'"),
        (["seed=[1"], "malformed override"),
        (["seed"], "malformed override 'seed': expected key=value"),
    ],
)
def test_mistakes_are_one_line_config_errors(
    compose: Callable[..., DictConfig], overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        compose(*overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_resolved_config_round_trips_and_fingerprint_is_stable(
    compose: Callable[..., DictConfig],
) -> None:
    a, b = compose("seed=1"), compose("seed=1")
    assert fingerprint(a) == fingerprint(b) != fingerprint(compose("seed=2"))
    assert "${" not in to_yaml(a)


def test_groups_list_their_options() -> None:
    assert {"image", "tabular"} <= set(available("task"))
    assert {"cnn", "mlp", "resnet18", "resnet50", "vit_tiny", "timm"} <= set(available("model"))
