"""The task contract: models carry their preprocessing, embed gives the penultimate vector,
timm backbones load local weights and fail in one line. Real snapshots, real timm, no network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig

from shipyard.data.prepare import prepare
from shipyard.data.snapshot import Snapshot
from shipyard.errors import ConfigError, UserError
from shipyard.tasks import get_task
from shipyard.tasks.layers import ImagePreprocess, Standardize, TaskModel

Compose = Callable[..., DictConfig]


def snapshot_of(compose: Compose, *overrides: str) -> tuple[DictConfig, Snapshot]:
    cfg = compose(*overrides)
    return cfg, prepare(cfg).snapshot


def build(cfg: DictConfig, snapshot: Snapshot) -> TaskModel:
    half = get_task(str(cfg.task.name)).training()
    model = half.build_model(cfg.model, snapshot.manifest["schema"], snapshot.load("train"))
    assert isinstance(model, TaskModel)
    return model.eval()


def test_unknown_task_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown task 'nope'") as error:
        get_task("nope")
    assert "\n" not in str(error.value)
    assert "image" in str(error.value)
    assert "tabular" in str(error.value)


# -- tabular: the training split's statistics live inside the model ----------------------


def test_standardize_holds_the_train_split_statistics_only(
    compose: Compose, regression_csv: Path
) -> None:
    csv = regression_csv
    cfg, snapshot = snapshot_of(
        compose,
        "task=tabular",
        "data=csv",
        f"data.path={csv}",
        "data.target=y",
        "data.target_type=number",
    )
    model = build(cfg, snapshot)
    assert isinstance(model.preprocess, Standardize)

    train = snapshot.load("train").features
    train_mean = train.mean()  # pandas skips NaN
    train_std = train.fillna(train_mean).std(ddof=0)
    np.testing.assert_allclose(model.preprocess.mean.numpy(), train_mean.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(model.preprocess.std.numpy(), train_std.to_numpy(), rtol=1e-4)

    # ... and not the statistics of the other splits or of all rows.
    every_row = pd.concat([snapshot.load(s).features for s in ("train", "val", "test")])
    for other in (snapshot.load("val").features, every_row):
        assert not np.allclose(model.preprocess.mean.numpy(), other.mean().to_numpy(), rtol=1e-5)


def test_tabular_model_turns_missing_values_into_the_training_mean(
    compose: Compose, regression_csv: Path
) -> None:
    csv = regression_csv
    cfg, snapshot = snapshot_of(
        compose,
        "task=tabular",
        "data=csv",
        f"data.path={csv}",
        "data.target=y",
        "data.target_type=number",
    )
    model = build(cfg, snapshot)
    preprocess = model.preprocess
    assert isinstance(preprocess, Standardize)
    mean = preprocess.mean
    rows = torch.tensor([[float("nan"), 1.0], [float("nan"), float("nan")], [2.0, 3.0]])

    standardized = preprocess(rows)
    assert torch.isfinite(standardized).all()
    assert standardized[1].abs().max() == 0  # an all-missing row is the mean row
    with torch.no_grad():
        output = model(rows)
        at_mean = model(mean.unsqueeze(0))
    assert output.shape == (3,)  # regression: one value per row
    assert torch.isfinite(output).all()
    assert output[1] == pytest.approx(float(at_mean[0]), abs=1e-6)


def test_a_column_missing_in_every_training_row_keeps_outputs_finite(
    compose: Compose, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "empty": np.nan, "y": rng.normal(size=60)})
    frame.to_csv(tmp_path / "empty.csv", index=False)
    cfg, snapshot = snapshot_of(
        compose,
        "task=tabular",
        "data=csv",
        f"data.path={tmp_path / 'empty.csv'}",
        "data.target=y",
        "data.target_type=number",
    )
    model = build(cfg, snapshot)
    half = get_task("tabular").training()
    features, _ = half.to_tensors(snapshot.load("test"), snapshot.manifest["schema"])
    assert torch.isnan(features[:, 1]).all()
    with torch.no_grad():
        assert torch.isfinite(model(features)).all()


def test_standardize_keeps_constant_columns_finite() -> None:
    layer = Standardize(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    out = layer(torch.tensor([[1.0, 6.0], [3.0, float("nan")]]))
    assert torch.equal(out, torch.tensor([[0.0, 1.0], [2.0, 0.0]]))


# -- images: raw pixels in ----------------------------------------------------------------


def test_image_model_takes_raw_pixels_and_normalises_inside(compose: Compose) -> None:
    cfg, snapshot = snapshot_of(compose, "task=image")
    model = build(cfg, snapshot)
    train = snapshot.load("train")
    assert train.features.dtype == np.uint8
    assert train.features.shape[1:] == (8, 8, 1)

    raw = torch.as_tensor(train.features[:16], dtype=torch.float32)  # 0..255, NHWC
    assert raw.max() > 1
    expected = (raw.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5  # model.mean/std of cnn.yaml
    assert torch.allclose(model.preprocess(raw), expected)
    with torch.no_grad():
        logits = model(raw)
    assert logits.shape == (16, 10)
    assert torch.isfinite(logits).all()


def test_image_preprocess_resizes_to_the_model_input_size() -> None:
    layer = ImagePreprocess([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], channels=1, size=(32, 32))
    images = torch.full((2, 8, 8, 1), 255.0)
    out = layer(images)
    assert out.shape == (2, 1, 32, 32)
    # RGB statistics are averaged for a greyscale image.
    mean, std = sum([0.485, 0.456, 0.406]) / 3, sum([0.229, 0.224, 0.225]) / 3
    assert torch.allclose(out, torch.full_like(out, (1.0 - mean) / std))


@pytest.mark.parametrize(
    ("overrides", "width"),
    [(("task=image",), 128), (("task=tabular",), 64)],
)
def test_embed_returns_the_penultimate_vector(
    compose: Compose, overrides: tuple[str, ...], width: int
) -> None:
    cfg, snapshot = snapshot_of(compose, *overrides)
    model = build(cfg, snapshot)
    half = get_task(str(cfg.task.name)).training()
    features, _ = half.to_tensors(snapshot.load("val"), snapshot.manifest["schema"])
    with torch.no_grad():
        embedding = model.embed(features)
        assert embedding.shape == (len(features), width)  # model.hidden (cnn) / hidden[-1] (mlp)
        assert torch.allclose(model.head(embedding), model(features))


# -- timm backbones -------------------------------------------------------------------------


def _timm_cfg(compose: Compose, *overrides: str) -> tuple[DictConfig, Snapshot]:
    return snapshot_of(compose, "task=image", "model.input_size=[32,32]", *overrides)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_backbone_loads_a_local_checkpoint(
    compose: Compose, tmp_path: Path, suffix: str
) -> None:
    import timm

    # An ImageNet-shaped file (3 input channels, 1000 classes), as downloaded from the Hub.
    source: Any = timm.create_model("resnet18", pretrained=False, in_chans=3)
    state = source.state_dict()
    weights = _save(state, tmp_path / f"resnet18{suffix}")
    cfg, snapshot = _timm_cfg(compose, "model=resnet18", f"model.checkpoint={weights}")

    model = build(cfg, snapshot)  # the digits are greyscale: one input channel
    encoder: Any = model.encoder
    assert encoder.conv1.weight.shape == (64, 1, 7, 7)
    # timm folds the RGB filters of the first conv into one channel; the rest load as is.
    assert torch.allclose(encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    fresh: Any = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
    assert not torch.equal(fresh.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])

    with torch.no_grad():
        logits = model(torch.as_tensor(snapshot.load("val").features[:4], dtype=torch.float32))
    assert logits.shape == (4, 10)


def test_timm_checkpoint_with_matching_channels_loads_exactly(
    compose: Compose, tmp_path: Path
) -> None:
    import timm

    source: Any = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
    weights = _save(source.state_dict(), tmp_path / "grey.safetensors")
    cfg, snapshot = _timm_cfg(compose, "model=resnet18", f"model.checkpoint={weights}")
    encoder: Any = build(cfg, snapshot).encoder
    for name, tensor in source.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], tensor), name


def test_pretrained_weights_offline_without_checkpoint_is_one_line(compose: Compose) -> None:
    cfg, snapshot = _timm_cfg(compose, "model=resnet18", "model.pretrained=true")
    with pytest.raises(ConfigError) as error:
        build(cfg, snapshot)
    message = str(error.value)
    assert "\n" not in message
    assert "model.checkpoint" in message
    assert "model.pretrained=false" in message
    # The real exception hub raises offline is kept as the cause.
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert isinstance(error.value.__cause__, LocalEntryNotFoundError)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("model=timm", "model.arch=resnet1888", "model.pretrained=false"), "unknown timm model"),
        (("model=resnet18", "model.checkpoint=/no/such/weights.safetensors"), "is not a file"),
    ],
)
def test_timm_user_mistakes_are_one_line(
    compose: Compose, overrides: tuple[str, ...], expected: str
) -> None:
    cfg, snapshot = _timm_cfg(compose, *overrides)
    with pytest.raises(UserError, match=expected) as error:
        build(cfg, snapshot)
    assert "\n" not in str(error.value)


def test_unknown_timm_arch_suggests_close_names(compose: Compose) -> None:
    cfg, snapshot = _timm_cfg(compose, "model=timm", "model.arch=resnet1888")
    with pytest.raises(ConfigError, match="resnet18"):
        build(cfg, snapshot)


def _unusable_file(kind: str, path: Path) -> Path:
    import timm

    if kind == "garbage":
        path.write_bytes(b"not weights at all")
    elif kind == "other-architecture":
        _save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), path)
    else:  # a training checkpoint whose keys carry a prefix (model.encoder.conv1.weight)
        encoder = timm.create_model("resnet18", pretrained=False, num_classes=0)
        state = {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()}
        torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("garbage", "weights.safetensors", "cannot load model.checkpoint"),
        ("garbage", "weights.pth", "cannot load model.checkpoint"),
        ("other-architecture", "vit.safetensors", "does not fit timm model 'resnet18'"),
        ("prefixed", "lightning.ckpt", "does not fit timm model 'resnet18'"),
    ],
)
def test_unusable_checkpoint_file_is_one_line(
    compose: Compose, tmp_path: Path, kind: str, name: str, expected: str
) -> None:
    weights = _unusable_file(kind, tmp_path / name)
    cfg, snapshot = _timm_cfg(compose, "model=resnet18", f"model.checkpoint={weights}")
    with pytest.raises(ConfigError, match=expected) as error:
        build(cfg, snapshot)
    assert "\n" not in str(error.value)
    assert str(weights) in str(error.value)


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_vision_transformers_are_built_for_the_configured_input_size(
    compose: Compose, arch: str
) -> None:
    cfg, snapshot = _timm_cfg(
        compose, "model=vit_tiny", f"model.arch={arch}", "model.pretrained=false"
    )
    model = build(cfg, snapshot)
    encoder: Any = model.encoder
    assert tuple(encoder.patch_embed.img_size) == (32, 32)
    raw = torch.as_tensor(snapshot.load("val").features[:3], dtype=torch.float32)
    with torch.no_grad():
        assert model.embed(raw).shape == (3, 192)
        assert model(raw).shape == (3, 10)


def test_vit_loads_a_224_checkpoint_at_a_small_input_size(compose: Compose, tmp_path: Path) -> None:
    import timm

    source: Any = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    weights = _save(source.state_dict(), tmp_path / "vit.safetensors")
    cfg, snapshot = _timm_cfg(compose, "model=vit_tiny", f"model.checkpoint={weights}")
    encoder: Any = build(cfg, snapshot).encoder
    # The position embeddings are resampled from 14x14 to 2x2 patches; the blocks load as is.
    assert encoder.pos_embed.shape[1] == 1 + 2 * 2
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
