"""How a summary is scored: ROUGE-1/2/L F1, and the lead-k baseline on the same split.

ROUGE comes from ``rouge-score`` (Google's re-implementation of ROUGE-1.5.5, the scorer
behind Hugging Face ``evaluate``): lower-cased, non-alphanumerics dropped, Porter stemming
on, so the figures compare with published ones. ROUGE-L is the sentence-level LCS variant
(``rougeL``), not the summary-level ``rougeLsum``.

The lead-k baseline is the yardstick every summariser must be shown beside: the first ``k``
sentences of the document. On news it is famously hard to beat; on ACLSum papers it is the
opening of the abstract. Torch-free (the promotion gate and a server-side report may score).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: the ROUGE variants Shipyard reports, in rouge-score's names
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by space
# and an upper-case letter, digit, quote or bracket. Abbreviations such as "e.g. the" do not
# split (lower-case follows); "et al. The" does, which is what a reader would do too.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs (each in [0, 1]), keyed ``rouge1``, ``rouge2``,
    ``rougeL``. Empty input is an error: a mean over nothing would read as a score of 0."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("ROUGE needs at least one prediction/reference pair")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += float(scores[name].fmeasure)
    return {name: total / len(predictions) for name, total in totals.items()}


def summary_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """What a summariser is scored by everywhere (training's test split, the export's ONNX
    graphs, the gate's re-scoring): ROUGE-1/2/L, and the mean words per summary."""
    words = [len(p.split()) for p in predictions]
    return rouge(predictions, references) | {"summary_words": sum(words) / max(len(words), 1)}


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (a rule-based splitter; good enough for the lead baseline,
    and with no model or data download, unlike nltk's punkt)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def lead(text: str, k: int = 3) -> str:
    """The first ``k`` sentences of ``text``."""
    if k < 1:
        raise ValueError(f"lead-k needs k >= 1, got {k}")
    return " ".join(sentences(text)[:k])


def lead_baseline(
    documents: Sequence[str], references: Sequence[str], k: int = 3
) -> dict[str, float]:
    """ROUGE of the lead-k summaries of ``documents`` against ``references``: computed on
    the same split as the model's, so the two numbers are comparable."""
    return rouge([lead(d, k) for d in documents], references)
