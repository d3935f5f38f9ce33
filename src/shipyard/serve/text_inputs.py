"""Text requests: instances and V2 ``BYTES`` tensors to token ids, or a 4xx that says why.

A text model's package carries its tokenizer; the server tokenises with it (the
``tokenizers`` library, no torch) exactly as training did, truncating texts over the
model's ``max_length`` (``serve.text_truncate``, the default) or refusing them with a 413
that names the limit. Every other refusal is a 422 naming the instance (or tensor element)
and what was expected: an empty text, a number, an object with other fields.
"""

from __future__ import annotations

from typing import Any

from shipyard.serve.inputs import TEXT_INPUT, InputLayout, RequestError, _json_type, check_count

__all__ = ["TEXT_INPUT", "encode_texts", "text_instances", "text_tensor"]


def text_instances(layout: InputLayout, instances: list[Any]) -> list[str]:
    """Instances of a text model: strings, or objects ``{"text": string}``; an empty text or
    anything else is a 422 naming the instance."""
    texts: list[str] = []
    for index, instance in enumerate(instances):
        value = instance
        if isinstance(instance, dict):
            if set(instance) != {TEXT_INPUT}:
                found = ", ".join(map(repr, sorted(instance))) or "no fields"
                raise RequestError(
                    f"instance {index} has {found}; expected {layout.expected()}",
                    kind="bad_type",
                )
            value = instance[TEXT_INPUT]
        if not isinstance(value, str):
            raise RequestError(
                f"instance {index} is a JSON {_json_type(value)}; expected {layout.expected()}",
                kind="bad_type",
            )
        if not value.strip():
            raise RequestError(
                f"instance {index} is an empty text; expected {layout.expected()}", kind="empty"
            )
        texts.append(value)
    return texts


def encode_texts(tokenizer: Any, texts: list[str], truncate: bool, what: str = "instance") -> Any:
    """Texts -> token ids (rows, longest) by the model's tokenizer. A text over the model's
    ``max_length`` tokens is truncated (``serve.text_truncate``, the default, as training
    did) or refused with a 413 that names the text and the limit."""
    encoded = tokenizer.encode(texts)
    if not truncate and encoded.truncated.any():
        index = int(encoded.truncated.argmax())
        raise RequestError(
            f"{what} {index} is {int(encoded.full_lengths[index])} tokens long; this model reads "
            f"at most {tokenizer.max_length} tokens (special tokens included). Send a shorter "
            "text, or serve with serve.text_truncate=true to truncate long texts as training did",
            kind="text_too_long",
            status=413,
        )
    return encoded.ids


def text_tensor(
    shape: list[int], datatype: str, data: Any, binary: bytes | None, max_instances: int
) -> list[str]:
    """A V2 ``BYTES`` tensor of texts, shape ``[n]`` or ``[n, 1]``: ``data`` a list of
    strings (JSON), or raw bytes after the JSON header, each element a 4-byte little-endian
    length and its UTF-8 bytes (the binary data extension's BYTES layout)."""
    if datatype != "BYTES":
        raise RequestError(
            f"input datatype {datatype!r}; a text model takes BYTES (one UTF-8 text per row)",
            kind="bad_type",
        )
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 0:
        raise RequestError(
            f"input shape {shape}; expected [rows] or [rows, 1] of texts", kind="bad_shape"
        )
    check_count(shape[0], max_instances, "rows in the input tensor")
    if binary is not None:
        values: list[Any] = _bytes_elements(binary)
    else:
        values = list(_flatten(data))
    if len(values) != shape[0]:
        raise RequestError(
            f"input data has {len(values)} texts but shape {shape} needs {shape[0]}",
            kind="bad_shape",
        )
    texts: list[str] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise RequestError(
                f"element {index} of the input is a JSON {_json_type(value)}; expected a string",
                kind="bad_type",
            )
        if not value.strip():
            raise RequestError(
                f"element {index} of the input is an empty text; expected a non-empty string",
                kind="empty",
            )
        texts.append(value)
    return texts


def _flatten(data: Any) -> Any:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _bytes_elements(data: bytes) -> list[str]:
    """BYTES elements of the binary extension: <uint32 LE length><bytes>, back to back."""
    texts: list[str] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise RequestError(
                "the BYTES input ends inside an element's 4-byte length", kind="bad_shape"
            )
        size = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(data):
            raise RequestError(
                f"a BYTES element claims {size} bytes but only {len(data) - offset} follow",
                kind="bad_shape",
            )
        try:
            texts.append(data[offset : offset + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(
                f"element {len(texts)} of the BYTES input is not UTF-8 text", kind="bad_type"
            ) from None
        offset += size
    return texts
