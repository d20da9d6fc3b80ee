"""`structured`: free text in, a JSON object matching a stated schema out.

Two schemas: a product listing and a customer request. The prompt states the schema in a compact
form (`{"key": "type"}`, enums as `A|B|C`); `meta["schema"]` holds the same schema in a
JSON-schema-like dict that `evalsuite.metrics.validate_schema` checks. Train, eval and dev draw
different items from the same generators; an eval row whose text occurs in train, or a dev row whose
text occurs in train or eval, is drawn again.
"""

from __future__ import annotations

import json
import random

N_TRAIN = 300
N_EVAL = 60
N_DEV = 60

CURRENCIES = {"USD": ["$", "USD", "dollars"], "EUR": ["EUR", "euros"], "GBP": ["GBP", "pounds"], "JPY": ["yen", "JPY"]}
CATEGORIES = {
    "electronics": ["Wireless Earbuds", "USB-C Charger", "Smart Speaker", "Mechanical Keyboard", "Webcam", "Power Bank"],
    "kitchen": ["Chef Knife", "Cast Iron Pan", "Coffee Grinder", "Rice Cooker", "Tea Kettle", "Cutting Board"],
    "clothing": ["Rain Jacket", "Wool Socks", "Running Shoes", "Denim Shirt", "Knit Beanie", "Linen Trousers"],
    "toys": ["Puzzle Cube", "Wooden Train Set", "Plush Bear", "Kite", "Building Blocks", "Toy Robot"],
    "books": ["Cookbook", "Travel Guide", "Poetry Collection", "Sketchbook", "Atlas", "Field Notebook"],
}
BRANDS = ["Norvik", "Pellan", "Quorra", "Tamsin", "Velda", "Orbis", "Kestrel", "Lumio", "Brindle", "Zephra",
          "Marlo", "Cindra"]
PRODUCT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "brand": {"type": "string"},
        "price": {"type": "number"},
        "currency": {"type": "string", "enum": list(CURRENCIES)},
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "in_stock": {"type": "boolean"},
    },
    "required": ["name", "brand", "price", "currency", "category", "in_stock"],
    "additionalProperties": False,
}
PRODUCT_TEXTS = [
    "{brand} {name}, {price} {cur}. {stock}",
    "New from {brand}: the {name} for {price} {cur}. {stock}",
    "{stock} {brand}'s {name} sells at {price} {cur}.",
    "Listing: {name} by {brand} - price {price} {cur} - {stock}",
    "The {name} made by {brand} costs {price} {cur}. {stock}",
]
STOCK = {True: ["In stock.", "Available now.", "Ships today."], False: ["Out of stock.", "Sold out.", "Currently unavailable."]}

INTENTS = {
    "refund": ["I want my money back for order {oid}", "please refund order {oid}", "requesting a refund on {oid}"],
    "cancel": ["cancel my order {oid}", "I no longer want order {oid}, please cancel it", "stop order {oid} before it ships"],
    "shipping_status": ["where is my order {oid}?", "has order {oid} shipped yet?", "tracking update for {oid} please"],
    "change_address": ["I moved, update the delivery address for {oid}", "ship order {oid} to my new address instead",
                       "wrong address on order {oid}, please change it"],
    "complaint": ["order {oid} arrived broken and I am unhappy", "the item in order {oid} is not as described",
                  "terrible experience with order {oid}"],
}
URGENT = {True: ["URGENT: ", "This is urgent, ", "ASAP - "], False: ["", "Hi, ", "Hello, "]}
REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": list(INTENTS)},
        "order_id": {"type": "string"},
        "urgent": {"type": "boolean"},
    },
    "required": ["intent", "order_id", "urgent"],
    "additionalProperties": False,
}


def compact_schema(schema: dict) -> str:
    """The schema as the prompt states it: {"name": "string", "currency": "USD|EUR", ...}."""
    props = {k: "|".join(v["enum"]) if "enum" in v else v["type"] for k, v in schema["properties"].items()}
    return json.dumps(props)


def _price(rng: random.Random, currency: str) -> float | int:
    if currency == "JPY":
        return rng.randrange(500, 30000, 10)
    return round(rng.uniform(3, 300), 2)


def _product(rng: random.Random) -> tuple[str, dict]:
    category = rng.choice(list(CATEGORIES))
    currency = rng.choice(list(CURRENCIES))
    gold = {
        "name": rng.choice(CATEGORIES[category]),
        "brand": rng.choice(BRANDS),
        "price": _price(rng, currency),
        "currency": currency,
        "category": category,
        "in_stock": rng.random() < 0.5,
    }
    symbol = rng.choice(CURRENCIES[currency])
    text = rng.choice(PRODUCT_TEXTS).format(
        brand=gold["brand"], name=gold["name"], price=gold["price"], cur=symbol, stock=rng.choice(STOCK[gold["in_stock"]])
    )
    return text, gold


def _request(rng: random.Random) -> tuple[str, dict]:
    intent = rng.choice(list(INTENTS))
    gold = {"intent": intent, "order_id": f"{rng.choice('ABCDEFGHJK')}{rng.randint(10000, 99999)}", "urgent": rng.random() < 0.4}
    text = rng.choice(URGENT[gold["urgent"]]) + rng.choice(INTENTS[intent]).format(oid=gold["order_id"])
    return text, gold


def _record(text: str, gold: dict, schema: dict) -> dict:
    prompt = f"Extract a JSON object with this schema: {compact_schema(schema)}\nText: {text}"
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": json.dumps(gold)}],
        "meta": {"task": "structured", "schema": schema, "answer": gold},
    }


def _draw(rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    records, seen = [], set(exclude)
    while len(records) < n:
        text, gold = _product(rng) if rng.random() < 0.6 else _request(rng)
        schema = PRODUCT_SCHEMA if "price" in gold else REQUEST_SCHEMA
        if text in seen:
            continue
        seen.add(text)
        records.append(_record(text, gold, schema))
    return records


def build(split: str, seed: int = 0) -> list[dict]:
    train = _draw(random.Random(f"structured-train-{seed}"), N_TRAIN, set())
    if split == "train":
        return train
    seen = {_text(r) for r in train}
    eval_ = _draw(random.Random(f"structured-eval-{seed}"), N_EVAL, seen)
    if split == "eval":
        return eval_
    return _draw(random.Random(f"structured-dev-{seed}"), N_DEV, seen | {_text(r) for r in eval_})


def _text(record: dict) -> str:
    return record["messages"][0]["content"].split("\nText: ", 1)[1]
