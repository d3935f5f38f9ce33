"""Torch-free summarisation: the exported encoder and decoder graphs on ONNX Runtime, a
decoding loop in numpy, and the package's ``tokenizer.json`` through ``tokenizers``.

This is what the server imports for the summarize task (numpy, onnxruntime and tokenizers
only; a test runs it in a fresh interpreter and checks that neither torch nor transformers
got imported). The folder it reads is what ``onnx_export.export_seq2seq`` and
``SummarizeTraining.write_tokenizer`` wrote: ``encoder.onnx``, ``decoder.onnx``,
``decoder_with_past.onnx``, ``generation.json`` and ``tokenizer.json``.

Decoding follows Hugging Face ``generate`` without sampling, so that greedy output can be
checked token for token against PyTorch: a generated sequence starts after the decoder start
token, ends at the end token or when it holds ``max_length`` tokens counting the start
token (``generate``'s own count), and finished rows of a batch are padded. Beam search
keeps ``num_beams`` hypotheses per document, finishes a document once it has ``num_beams``
ended hypotheses (``early_stopping=True``), and ranks them by summed log-probability over
``length ** length_penalty``.

With ``use_past`` (the default) the first step runs ``decoder.onnx`` on the start token and
every later step runs ``decoder_with_past.onnx`` on the newest token and the cache; without
it every step re-runs ``decoder.onnx`` on the whole prefix. Both give the same tokens; the
cache is faster (measured in the tutorial and the report), so it is the default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.tasks.text.tokenizer import TOKENIZER_FILE, TextTokenizer

SPEC_FILE = "generation.json"


@dataclass(frozen=True)
class Generated:
    """Per document: the generated token ids (after the start token; the end token included
    when reached) and their summed log-probability under the model."""

    ids: list[list[int]]
    logprobs: list[float]


class _State:
    """What a decoding step carries: the prefixes, and the cache or the encoder states."""

    def __init__(
        self,
        mask: np.ndarray,
        hidden: np.ndarray,
        prefix: np.ndarray,
        past: list[np.ndarray],
        cross: list[np.ndarray],
    ) -> None:
        self.mask = mask
        self.hidden = hidden
        self.prefix = prefix
        self.past = past
        self.cross = cross

    def take(self, rows: np.ndarray) -> _State:
        """The state of the rows ``rows`` (beam reordering and expansion)."""
        return _State(
            self.mask[rows],
            self.hidden[rows] if self.hidden.size else self.hidden,
            self.prefix[rows],
            [p[rows] for p in self.past],
            [c[rows] for c in self.cross],
        )


class OnnxSummarizer:
    """A summarisation model package folder, ready to decode (thread-safe: ONNX Runtime
    sessions may be run concurrently, and no state is kept between calls)."""

    def __init__(
        self, folder: str | Path, *, threads: int | None = None, inter_op_threads: int = 1
    ) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.spec: dict[str, Any] = json.loads(
            (self.folder / SPEC_FILE).read_text(encoding="utf-8")
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = inter_op_threads
        graphs = self.spec["graphs"]

        def session(role: str) -> Any:
            return ort.InferenceSession(
                str(self.folder / graphs[role]), options, providers=["CPUExecutionProvider"]
            )

        self.encoder = session("encoder")
        self.decoder = session("decoder")
        self.decoder_with_past = session("decoder_with_past")
        self.layers = int(self.spec["layers"])
        self.start_id = int(self.spec["decoder_start_token_id"])
        self.eos_id = int(self.spec["eos_token_id"])
        self.pad_id = int(self.spec["pad_token_id"])
        self.max_target_length = int(self.spec["max_target_length"])
        self._tokenizer: TextTokenizer | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The package's tokenizer (truncation at the encoder's length, batch padding)."""
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.from_file(self.folder / TOKENIZER_FILE)
        return self._tokenizer

    # -- text in, text out ------------------------------------------------------------------

    def summarize(self, texts: list[str], **options: Any) -> list[str]:
        """Summaries of ``texts``; ``options`` as for :meth:`generate`."""
        ids, mask = self.encode(texts)
        return self.decode(self.generate(ids, mask, **options).ids)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask (rows, longest) of ``texts``."""
        encoded = self.tokenizer.encode(texts)
        width = encoded.ids.shape[1]
        mask = (np.arange(width)[None, :] < encoded.lengths[:, None]).astype(np.int64)
        return encoded.ids, mask

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Generated ids as text, special tokens dropped."""
        texts: list[str] = self.tokenizer.tokenizer.decode_batch(ids, skip_special_tokens=True)
        return texts

    # -- token ids in, token ids out ----------------------------------------------------------

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        *,
        max_length: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        use_past: bool = True,
    ) -> Generated:
        """Greedy (``num_beams`` 1) or beam-search decoding of a batch of documents.

        ``max_length`` counts the start token, as Hugging Face's ``generate`` does (default:
        the ``max_target_length`` the model was exported with). ``no_repeat_ngram_size``
        n > 0 forbids any n-gram to occur twice in a summary (Hugging Face's processor of
        that name): the usual cure for the loops a small summariser falls into.
        """
        attention_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        hidden = self.encode_states(input_ids, attention_mask)
        return self.decode_states(
            hidden,
            attention_mask,
            max_length=max_length,
            num_beams=num_beams,
            length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            use_past=use_past,
        )

    def encode_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The encoder's last hidden states (rows, tokens, hidden) of a batch of documents."""
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        attention_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must "
                "be the same (rows, tokens) shape"
            )
        hidden: np.ndarray = self.encoder.run(
            None, {"input_ids": input_ids, "attention_mask": attention_mask}
        )[0]
        return hidden

    def decode_states(
        self,
        hidden: np.ndarray,
        attention_mask: np.ndarray,
        *,
        max_length: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        use_past: bool = True,
    ) -> Generated:
        """:meth:`generate` from the encoder's states (:meth:`encode_states`)."""
        limit = int(max_length or self.max_target_length)
        if limit < 2:
            raise ValueError(f"max_length must be at least 2 (start + one token), got {limit}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        ngram = max(int(no_repeat_ngram_size), 0)
        if num_beams == 1:
            return self._greedy(hidden, attention_mask, limit, ngram, use_past)
        return self._beam(hidden, attention_mask, limit, num_beams, length_penalty, ngram, use_past)

    def sequence_logprob(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, sequences: list[list[int]]
    ) -> list[float]:
        """The summed log-probability of given sequences (teacher-forced, one doc each): a
        check on the scores that decoding reports, computed independently of the search."""
        hidden = self.encoder.run(
            None,
            {
                "input_ids": np.asarray(input_ids, np.int64),
                "attention_mask": np.asarray(attention_mask, np.int64),
            },
        )[0]
        rows = len(sequences)
        longest = max(len(s) for s in sequences)
        forced = np.full((rows, longest), self.pad_id, dtype=np.int64)
        for i, sequence in enumerate(sequences):
            forced[i, : len(sequence)] = sequence
        totals = np.zeros(rows)
        logits, state = self._first(hidden, np.asarray(attention_mask, np.int64), True)
        for t in range(longest):
            logp = _log_softmax(logits)
            alive = np.array([t < len(s) for s in sequences])
            totals += np.where(alive, logp[np.arange(rows), forced[:, t]], 0.0)
            if t + 1 < longest:
                logits, state = self._next(state, forced[:, t], True)
        return [float(x) for x in totals]

    # -- decoding steps -------------------------------------------------------------------------

    def _first(
        self, hidden: np.ndarray, mask: np.ndarray, use_past: bool
    ) -> tuple[np.ndarray, _State]:
        rows = hidden.shape[0]
        prefix = np.full((rows, 1), self.start_id, dtype=np.int64)
        out = self.decoder.run(
            None,
            {"decoder_input_ids": prefix, "encoder_hidden": hidden, "encoder_attention_mask": mask},
        )
        n = 2 * self.layers
        if use_past:
            state = _State(mask, np.zeros((0,), np.float32), prefix, out[1 : 1 + n], out[1 + n :])
        else:
            state = _State(mask, hidden, prefix, [], [])
        return out[0], state

    def _next(self, state: _State, tokens: np.ndarray, use_past: bool) -> tuple[np.ndarray, _State]:
        prefix = np.concatenate([state.prefix, tokens[:, None].astype(np.int64)], axis=1)
        if not use_past:
            out = self.decoder.run(
                ["logits"],
                {
                    "decoder_input_ids": prefix,
                    "encoder_hidden": state.hidden,
                    "encoder_attention_mask": state.mask,
                },
            )
            return out[0], _State(state.mask, state.hidden, prefix, [], [])
        feeds: dict[str, np.ndarray] = {
            "decoder_input_ids": prefix[:, -1:],
            "encoder_attention_mask": state.mask,
        }
        for i in range(self.layers):
            feeds[f"past.{i}.key"], feeds[f"past.{i}.value"] = state.past[2 * i : 2 * i + 2]
            feeds[f"cross.{i}.key"], feeds[f"cross.{i}.value"] = state.cross[2 * i : 2 * i + 2]
        out = self.decoder_with_past.run(None, feeds)
        return out[0], _State(state.mask, state.hidden, prefix, out[1:], state.cross)

    def _greedy(
        self, hidden: np.ndarray, mask: np.ndarray, limit: int, ngram: int, use_past: bool
    ) -> Generated:
        rows = hidden.shape[0]
        logits, state = self._first(hidden, mask, use_past)
        finished = np.zeros(rows, dtype=bool)
        totals = np.zeros(rows)
        generated: list[np.ndarray] = []
        for step in range(limit - 1):
            logp = _log_softmax(logits)
            tokens = np.where(
                finished, self.pad_id, _banned(logp, state.prefix, ngram).argmax(axis=-1)
            )
            totals += np.where(finished, 0.0, logp[np.arange(rows), tokens])
            generated.append(tokens)
            finished |= tokens == self.eos_id
            if finished.all() or step == limit - 2:
                break
            logits, state = self._next(state, tokens, use_past)
        matrix = np.stack(generated, axis=1) if generated else np.zeros((rows, 0), np.int64)
        return Generated([_trim(row, self.eos_id) for row in matrix], totals.tolist())

    def _beam(
        self,
        hidden: np.ndarray,
        mask: np.ndarray,
        limit: int,
        beams: int,
        length_penalty: float,
        ngram: int,
        use_past: bool,
    ) -> Generated:
        docs = hidden.shape[0]
        expand = np.repeat(np.arange(docs), beams)
        logits, state = self._first(hidden[expand], mask[expand], use_past)
        # Only the first beam of each document is live at the start: the others would
        # repeat its candidates.
        scores = np.tile(np.array([0.0] + [-np.inf] * (beams - 1)), docs)
        sequences: list[list[int]] = [[] for _ in range(docs * beams)]
        finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(docs)]
        done = np.zeros(docs, dtype=bool)
        vocab = logits.shape[-1]

        def add(doc: int, total: float, tokens: list[int]) -> None:
            normalised = total / (max(len(tokens), 1) ** length_penalty)
            finished[doc].append((normalised, total, tokens))
            finished[doc].sort(key=lambda h: h[0], reverse=True)
            del finished[doc][beams:]

        for step in range(limit - 1):
            logp = _banned(_log_softmax(logits), state.prefix, ngram)
            candidates = (scores[:, None] + logp).reshape(docs, beams * vocab)
            top = _top(candidates, 2 * beams)
            rows = np.empty(docs * beams, dtype=np.int64)
            tokens = np.full(docs * beams, self.pad_id, dtype=np.int64)
            new_scores = np.full(docs * beams, -np.inf)
            new_sequences: list[list[int]] = [[] for _ in range(docs * beams)]
            last = step == limit - 2
            for doc in range(docs):
                slot = doc * beams
                rows[slot : slot + beams] = slot  # finished documents keep a dummy beam
                if done[doc]:
                    continue
                kept = 0
                for rank, flat in enumerate(top[doc]):
                    total = float(candidates[doc, flat])
                    if not np.isfinite(total):
                        break
                    source, token = doc * beams + int(flat) // vocab, int(flat) % vocab
                    if token == self.eos_id:
                        # As in Hugging Face: an ending counts only among the top candidates.
                        if rank < beams:
                            add(doc, total, [*sequences[source], token])
                        continue
                    rows[slot + kept], tokens[slot + kept] = source, token
                    new_scores[slot + kept] = total
                    new_sequences[slot + kept] = [*sequences[source], token]
                    kept += 1
                    if kept == beams:
                        break
                if last:  # out of length: the live beams end here, unfinished
                    for b in range(kept):
                        add(doc, float(new_scores[slot + b]), new_sequences[slot + b])
                done[doc] = last or len(finished[doc]) >= beams
            scores, sequences = new_scores, new_sequences
            if done.all():
                break
            logits, state = self._next(state.take(rows), tokens, use_past)
        best = [hyps[0] if hyps else (0.0, 0.0, []) for hyps in finished]
        return Generated([h[2] for h in best], [h[1] for h in best])


def _top(candidates: np.ndarray, k: int) -> np.ndarray:
    """Each row's column indices of its ``k`` largest values, largest first, ties by index:
    what a stable argsort of the negated rows gives, without sorting whole rows (a row is
    beams x vocabulary wide; sorting it was 70% of beam search's time)."""
    if k >= candidates.shape[1]:
        return np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-candidates, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(candidates, part, axis=1)
    order = np.lexsort((part, -values), axis=-1)
    top: np.ndarray = np.take_along_axis(part, order, axis=1)
    return top


def _banned(logp: np.ndarray, prefixes: np.ndarray, n: int) -> np.ndarray:
    """``logp`` with -inf for every token that would repeat an n-gram of its row's prefix
    (the start token included, as Hugging Face counts it)."""
    if n < 1 or prefixes.shape[1] + 1 < n:
        return logp
    out = logp.copy()
    for row, prefix in enumerate(prefixes.tolist()):
        key = tuple(prefix[len(prefix) - n + 1 :]) if n > 1 else ()
        banned = [
            prefix[i + n - 1]
            for i in range(len(prefix) - n + 1)
            if tuple(prefix[i : i + n - 1]) == key
        ]
        if banned:
            out[row, banned] = -np.inf
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _trim(row: np.ndarray, eos: int) -> list[int]:
    """A generated row up to and including its first end token."""
    out: list[int] = []
    for token in row.tolist():
        out.append(int(token))
        if token == eos:
            break
    return out
