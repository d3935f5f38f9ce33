"""The search space and the sweep settings: checked against the real composed config, one
clear error per mistake, and drawn values that compose back to the same config."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from omegaconf import DictConfig

from shipyard.config import available, compose, user_config_dir
from shipyard.errors import ConfigError
from shipyard.sweep.settings import load_settings, split_overrides
from shipyard.sweep.space import parse_space, to_override


def test_default_space_is_nested_and_checked(home: Path) -> None:
    settings = load_settings(["task=image"])
    keys = [d.key for d in settings.space]
    assert keys == ["model.lr", "model.weight_decay", "trainer.batch_size"]
    assert settings.space[0].log
    assert settings.space[2].choices == (32, 64, 128)


def test_cnn_space_adds_to_the_default(home: Path) -> None:
    keys = [d.key for d in load_settings(["task=image", "sweep=cnn"]).space]
    assert keys == [
        "model.lr",
        "model.weight_decay",
        "model.dropout",
        "model.hidden",
        "trainer.batch_size",
    ]


def test_dotted_and_nested_keys_and_null_switches_an_entry_off(
    compose: Callable[..., DictConfig],
) -> None:
    base = compose("task=tabular")
    space = {
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "trainer": {"batch_size": None, "max_epochs": {"type": "int", "low": 2, "high": 6}},
    }
    dims = parse_space(space, base)
    assert [(d.key, d.type) for d in dims] == [
        ("model.dropout", "float"),
        ("trainer.max_epochs", "int"),
    ]
    with pytest.raises(ConfigError, match=re.escape("names 'model.lr' twice")):
        parse_space({"model.lr": {"type": "float", "low": 1, "high": 2}, "model": {"lr": {"type": "float", "low": 1, "high": 2}}}, base)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "unknown config key 'model.lrr'"),
        ({"model.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, r"low \(0.01\) must not be greater than high \(0.0001\)"),
        ({"model.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
        ({"model.lr": {"type": "uniform", "low": 0.0, "high": 1.0}}, "use one of float, int, categorical"),
        ({"model.lr": {"type": "float", "low": 0.0, "hi": 1.0}}, "unknown key"),
        ({"trainer.max_epochs": {"type": "int", "low": 1.5, "high": 3}}, "low must be an int"),
        ({"trainer.batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"model.hidden": {"type": "categorical", "choices": [[64], [128]]}}, "is not a number, string"),
        ({"model": {"type": "float", "low": 0.0, "high": 1.0}}, "is a config section"),
        ({"model.lr": 0.1}, "must be a distribution"),
        ({}, "sweep.space is empty"),
    ],
)  # fmt: skip
def test_bad_space_is_one_line(
    compose: Callable[..., DictConfig], spec: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_space(spec, compose("task=image"))
    assert "\n" not in str(info.value)


def test_bad_sweep_settings(home: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sweep 'nope': choose one of cnn, default"):
        load_settings(["sweep=nope"])
    with pytest.raises(ConfigError, match=re.escape("sweep.pruner.type is 'hyper'")):
        load_settings(["sweep.pruner.type=hyper"])
    with pytest.raises(ConfigError, match=re.escape("sweep.trials must be a whole number")):
        load_settings(["sweep.trials=0"])
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'sweep.samplr.seed'")):
        load_settings(["sweep.samplr.seed=1"])


def test_overrides_are_split_between_training_and_sweep() -> None:
    train, sweep, option = split_overrides(
        ["task=image", "sweep=cnn", "sweep.pruner.type=none", "+sweep.space.model.x={}", "seed=3"]
    )
    assert train == ["task=image", "seed=3"]
    assert sweep == ["sweep.pruner.type=none", "+sweep.space.model.x={}"]
    assert option == "cnn"


def test_study_name_follows_what_defines_the_search(home: Path) -> None:
    one = load_settings(["task=image", "trainer=fast"]).study_name()
    assert one == load_settings(["task=image", "trainer=fast"]).study_name()
    assert one.startswith("image-cnn-")
    assert one != load_settings(["task=image"]).study_name()
    assert one != load_settings(["task=image", "trainer=fast", "sweep=cnn"]).study_name()
    assert load_settings(["sweep.study=mine"]).study_name() == "mine"


def test_metric_and_direction(home: Path) -> None:
    from shipyard.sweep.settings import SweepSettings

    def make(metric: str | None, direction: str | None) -> SweepSettings:
        return SweepSettings(
            option="default", study=None, storage=None, trials=1, metric=metric,
            direction=direction, sampler_seed=0, n_startup_trials=1, pruner="none",
            pruner_startup_trials=0, pruner_warmup_steps=0, heartbeat_interval_s=None,
            grace_period_s=None, max_retry=0, space=[], space_spec={}, train_overrides=(),
            base=compose([]),
        )  # fmt: skip

    assert make(None, None).metric_and_direction(("accuracy", "max")) == ("accuracy", "maximize")
    assert make(None, None).metric_and_direction(("mae", "min")) == ("mae", "minimize")
    assert make("val_loss", None).metric_and_direction(("accuracy", "max")) == ("loss", "minimize")
    assert make("r2", None).metric_and_direction(("mae", "min")) == ("r2", "maximize")
    assert make("loss", "maximize").metric_and_direction(("mae", "min")) == ("loss", "maximize")


def test_drawn_values_compose_back_exactly(compose: Callable[..., DictConfig]) -> None:
    values = {"model.lr": 0.00012345678901234567, "model.dropout": 1e-05, "seed": 7}
    cfg = compose("task=image", *(to_override(k, v) for k, v in values.items()))
    assert cfg.model.lr == values["model.lr"]
    assert cfg.model.dropout == values["model.dropout"]
    assert cfg.seed == 7
    assert to_override("data.target", "it's") == "data.target='it\\'s'"
    assert (
        compose("task=image", to_override("tracking.experiment", "a b,c'd")).tracking.experiment
        == "a b,c'd"
    )
    assert (
        to_override("trainer.early_stopping_patience", None)
        == "trainer.early_stopping_patience=null"
    )
    assert to_override("trainer.deterministic", False) == "trainer.deterministic=false"


def test_every_distribution_is_drawn_within_its_bounds(compose: Callable[..., DictConfig]) -> None:
    dims = parse_space(
        {
            "model": {
                "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
                "hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
            },
            "trainer": {"precision": {"type": "categorical", "choices": ["32-true", "bf16-mixed"]}},
        },
        compose("task=tabular"),
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        drawn = {d.key: d.suggest(trial) for d in dims}
        assert 1e-4 <= drawn["model.lr"] <= 1e-2
        assert round(drawn["model.dropout"] * 10, 6) == round(drawn["model.dropout"] * 10)
        assert drawn["model.hidden"] in (16, 32, 48, 64)
        assert drawn["trainer.precision"] in ("32-true", "bf16-mixed")
        study.tell(trial, 0.0)


def test_user_experiments_are_found_and_listed(
    compose: Callable[..., DictConfig], home: Path
) -> None:
    assert "mine" not in available("experiment")
    folder = user_config_dir() / "experiment"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /trainer: fast\nmodel:\n  lr: 0.0042\n"
    )
    assert folder == home / "conf" / "experiment"
    assert "mine" in available("experiment")
    assert "digits_quick" in available("experiment")
    cfg = compose("experiment=mine")
    assert cfg.model.lr == 0.0042
    assert cfg.trainer.max_epochs == 2
    with pytest.raises(
        ConfigError, match="unknown experiment 'theirs': choose one of digits_quick, mine"
    ):
        compose("experiment=theirs")


def test_user_sweep_and_model_options(compose: Callable[..., DictConfig], home: Path) -> None:
    (home / "conf" / "sweep").mkdir(parents=True)
    (home / "conf" / "sweep" / "mine.yaml").write_text(
        "defaults:\n  - default\nspace:\n  seed: {type: int, low: 0, high: 9}\n"
    )
    (home / "conf" / "model").mkdir(parents=True)
    (home / "conf" / "model" / "tiny.yaml").write_text(
        "defaults:\n  - cnn\nname: tiny\nchannels: [4]\nhidden: 8\n"
    )
    keys = [d.key for d in load_settings(["sweep=mine"]).space]
    assert keys == ["model.lr", "model.weight_decay", "trainer.batch_size", "seed"]
    assert "mine" in available("sweep")
    model = compose("model=tiny").model
    assert (model.name, list(model.channels), model.hidden, model.family) == ("tiny", [4], 8, "cnn")


def test_a_summariser_is_swept_on_its_loss_only(home: Path) -> None:
    """ROUGE is scored by generating, once, after training: a sweep that ranks or prunes
    summarisers on it is refused before the first trial."""
    from shipyard.sweep.run import check_inputs, run_sweep

    base = load_settings(["task=summarize", "data.limit=5"]).base
    assert check_inputs(base)[1:] == (("loss", "min"), "text")
    with pytest.raises(
        ConfigError, match="'rougeL' is not scored for text targets: use one of loss"
    ):
        run_sweep(["task=summarize", "data.limit=5", "sweep.metric=rougeL"], trials=1)
