"""The bundled summarisation corpus: ACLSum, read from the files of the ``aclsum`` wheel.

ACLSum (Takeshita et al., 2024, MIT licence) pairs 250 ACL Anthology papers with
human-written summaries. The wheel on PyPI carries the whole data set as JSON lines
(``aclsum/dataset/{train,val,test}.jsonl``: 100 / 50 / 100 papers), so Shipyard trains
and scores a summariser offline, with no download at run time and a fixed, published split.

* **Document**: the paper's abstract, introduction and conclusion, in that order — the
  source text the data set's own ``to_parallel_corpus`` uses. The sentences are stored
  tokenised ("paper , we"); :func:`detokenize` closes the spaces before punctuation so that
  a document reads like the text a user would send.
* **Summary**: the three aspect summaries the annotators wrote (challenge, approach,
  outcome), joined in that order: a three-sentence abstractive summary of the paper.
  They are written, not extracted, so the lead-k baseline has no built-in advantage: it
  must find the summary's words in the paper's first sentences, as a real summariser does.

Only the data files are read (``importlib`` finds the package folder; ``aclsum`` itself,
which would import ``sienna``, is not imported). Torch-free.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

#: the PyPI distribution that ships the data in its wheel, and its import name
PACKAGE = "aclsum"
#: the published splits, in the data set's own names
SPLITS = ("train", "val", "test")
#: the summary is these aspect summaries, joined in this order
ASPECTS = ("challenge", "approach", "outcome")
#: the paper sections that make up a document, in this order
SECTIONS = ("abstract", "introduction", "conclusion")

_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]}]|'s\b|n't\b)")
_SPACE_AFTER = re.compile(r"([(\[{]) ")


@dataclass(frozen=True)
class SummaryCorpus:
    """Document/summary pairs of one or more splits, with where they came from."""

    ids: list[str]
    documents: list[str]
    summaries: list[str]
    #: the published split of each pair ("train", "val", "test")
    splits: list[str]
    #: lineage: the distribution and version that shipped the data
    package: str
    version: str

    def __len__(self) -> int:
        return len(self.documents)

    def split(self, name: str) -> SummaryCorpus:
        """The pairs of one published split."""
        keep = [i for i, s in enumerate(self.splits) if s == name]
        return SummaryCorpus(
            ids=[self.ids[i] for i in keep],
            documents=[self.documents[i] for i in keep],
            summaries=[self.summaries[i] for i in keep],
            splits=[name] * len(keep),
            package=self.package,
            version=self.version,
        )


def data_folder() -> Path:
    """The folder of JSON-lines files inside the installed ``aclsum`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the summarisation corpus is ACLSum from the aclsum package, which is not "
            "installed: pip install aclsum"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    missing = [s for s in SPLITS if not (folder / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(s + '.jsonl' for s in missing)}")
    return folder


def load_corpus(splits: tuple[str, ...] = SPLITS, limit: int | None = None) -> SummaryCorpus:
    """ACLSum's pairs of ``splits`` (all three by default), in file order.

    ``limit`` keeps the first ``limit`` pairs of each split (tests and quick runs).
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {', '.join(SPLITS)}")
    folder = data_folder()
    ids: list[str] = []
    documents: list[str] = []
    summaries: list[str] = []
    names: list[str] = []
    for name in splits:
        with (folder / f"{name}.jsonl").open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        for row in rows[:limit]:
            ids.append(str(row["id"]))
            documents.append(document_text(row))
            summaries.append(" ".join(row["summary"][a].strip() for a in ASPECTS))
            names.append(name)
    return SummaryCorpus(
        ids=ids,
        documents=documents,
        summaries=summaries,
        splits=names,
        package=PACKAGE,
        version=importlib.metadata.version(PACKAGE),
    )


def document_text(row: dict[str, object]) -> str:
    """A paper's abstract, introduction and conclusion as one detokenised text."""
    sections = row["sentences"]
    assert isinstance(sections, dict)
    return " ".join(detokenize(s) for section in SECTIONS for s in sections.get(section, []))


def detokenize(sentence: str) -> str:
    """Undo the corpus's tokenised spacing ("paper , we ( 2019 )" -> "paper, we (2019)")."""
    return _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", sentence.strip()))
