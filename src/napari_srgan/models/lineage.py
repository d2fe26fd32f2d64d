"""A model's training lineage: how every stage that made it was trained.

A fine-tuned model's card keeps its base's training record under ``"base_training"``, which keeps
its own base's, and so on: a model trained from scratch, then fine-tuned twice, says how each of
the three stages was made (microscopists publishing results need the whole history). A chain is
cut to what a card can hold and still be read back: the most recent stages are kept, and the
oldest kept stage says how many older ones were left out.
"""

from __future__ import annotations

import json

#: The key under which a stage keeps the stage before it (its base model's training record).
BASE_TRAINING = "base_training"
#: The key in the oldest kept stage that counts the older stages left out.
EARLIER_STAGES_DROPPED = "earlier_stages_dropped"
#: The most training stages one card keeps (its own and its bases'): a model fine-tuned in a
#: loop would otherwise grow its card with every run.
MAX_STAGES = 32
#: The largest inherited record (JSON bytes): a card is parsed whenever models are listed, and
#: real stages take 1 to 5 kB.
MAX_BYTES = 2**19
#: The deepest inherited record (JSON nesting, each stage one level below the one after it):
#: Python reads JSON only to about 1000 levels, beyond which the model would not load at all.
MAX_DEPTH = 200


def training_stages(record: object) -> tuple[list[dict], int]:
    """The stages of a card's training record, most recent first (each without the stages before
    it), and how many older stages an earlier cut left out."""
    stages: list[dict] = []
    while isinstance(record, dict) and record:
        before = record.get(BASE_TRAINING)
        nested = isinstance(before, dict)
        stages.append({k: v for k, v in record.items() if not (nested and k == BASE_TRAINING)})
        record = before if nested else None
    dropped = stages[-1].get(EARLIER_STAGES_DROPPED) if stages else None
    if not isinstance(dropped, int) or isinstance(dropped, bool) or dropped < 0:
        return stages, 0  # not a count this module wrote: kept as the stage's own field
    del stages[-1][EARLIER_STAGES_DROPPED]
    return stages, dropped


def inherited_training(base_record: dict) -> dict:
    """What a model fine-tuned from a base keeps of the base's training record: its most recent
    stages (the new stage is one of :data:`MAX_STAGES`), as many as fit :data:`MAX_BYTES` and
    :data:`MAX_DEPTH`; the oldest kept stage counts those left out. Empty when the base has no
    record (trained elsewhere, converted, or a placeholder)."""
    stages, dropped = training_stages(base_record)
    kept, size = 0, 0
    for position, stage in enumerate(stages[: MAX_STAGES - 1]):
        size += len(json.dumps(stage)) + len(BASE_TRAINING) + 8
        if size > MAX_BYTES or position + _depth(stage) > MAX_DEPTH:
            break
        kept += 1
    return _nested(stages[:kept], dropped + len(stages) - kept)


def _nested(stages: list[dict], dropped: int) -> dict:
    """``stages`` (most recent first) nested as a card stores them, the oldest one counting the
    ``dropped`` stages before it."""
    if not stages:
        return {EARLIER_STAGES_DROPPED: dropped} if dropped else {}
    record = {**stages[-1], **({EARLIER_STAGES_DROPPED: dropped} if dropped else {})}
    for stage in reversed(stages[:-1]):
        record = {**stage, BASE_TRAINING: record}
    return record


def _depth(value: object) -> int:
    """The JSON nesting of ``value`` (0 for a number or string), without recursion: the value
    may be nested as deeply as a JSON parser allows."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest
