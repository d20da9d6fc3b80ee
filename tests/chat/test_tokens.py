"""A chat record as input ids and labels: the loss falls on the reply only."""

from __future__ import annotations

from adaptermerge import base
from adaptermerge.chat.data import build_records
from adaptermerge.chat.tokens import IGNORE, collate, tokenize_record


def test_tokenize_record_masks_the_prompt():
    tokenizer = base.load_tokenizer()
    record = build_records("domain", "train")[0]
    ids, labels = tokenize_record(tokenizer, record, 512)
    reply = [t for t, l in zip(ids, labels) if l != IGNORE]
    assert labels[: len(ids) - len(reply)] == [IGNORE] * (len(ids) - len(reply))
    assert tokenizer.decode(reply) == record["messages"][-1]["content"] + "<|im_end|>\n"
    assert tokenize_record(tokenizer, record, len(ids) - len(reply)) is None  # no reply token fits
    # An anchor row keeps min_reply_tokens of its reply even past max_length.
    ids2, labels2 = tokenize_record(tokenizer, record, len(ids) - len(reply), min_reply_tokens=2)
    assert ids2 == ids[: len(ids) - len(reply) + 2] and [l for l in labels2 if l != IGNORE] == reply[:2]


def test_collate_pads_right_and_masks_the_padding():
    batch = collate([([1, 2, 3], [IGNORE, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
