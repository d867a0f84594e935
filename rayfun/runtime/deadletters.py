"""Dead letters: what could not be processed, published with the reason instead of being dropped.

Records go to the egress ``rayfun/dead-letters`` as JSON under the typename ``rayfun/DeadLetter``:
``{"reason", "function", "id", "caller", "source", "endpoint", "message_typename", "message_b64",
"message"}`` (``message`` is the decoded value when it is a built-in type). A user can route that egress
to any sink (Kafka, files) like any other, or read it with ``app.egress("rayfun/dead-letters")``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..io import DEAD_LETTER_EGRESS
from ..messages import EgressMessage
from ..types import BUILTIN_TYPES, encode_payload, make_json_type

__all__ = ["DEAD_LETTER_EGRESS", "DeadLetterType", "dead_letter_record"]

DeadLetterType = make_json_type("rayfun/DeadLetter")


def dead_letter_record(
    reason: str,
    *,
    function: str | None = None,
    id: str | None = None,
    caller: tuple[str, str] | None = None,
    source: str | None = None,
    endpoint: str | None = None,
    value_typename: str | None = None,
    payload: Any = None,
) -> EgressMessage:
    """Build the dead-letter egress record for one failed input."""
    record: dict[str, Any] = {"reason": reason}
    if function:
        record["function"] = function
        record["id"] = id
    if caller:
        record["caller"] = f"{caller[0]}/{caller[1]}"
    if source:
        record["source"] = source
    if endpoint:
        record["endpoint"] = endpoint
    if value_typename:
        record["message_typename"] = value_typename
    if payload is not None:
        try:
            raw = encode_payload(value_typename or "", payload)
            record["message_b64"] = base64.b64encode(raw).decode("ascii")
        except Exception:
            record["message"] = repr(payload)
        if value_typename in BUILTIN_TYPES and not isinstance(payload, (bytes, bytearray)):
            record["message"] = payload
    # backslashreplace: a field that is not valid text (a lone surrogate in a refused id) becomes the JSON
    # escape ``\ud800``, which reads back as what came in, instead of failing the shard that reports it
    data = json.dumps(record, ensure_ascii=False, default=repr).encode("utf-8", "backslashreplace")
    return EgressMessage(DEAD_LETTER_EGRESS, DeadLetterType.typename, data)
