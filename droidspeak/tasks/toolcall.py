"""Tool-call extraction over long order logs (metric: fraction of call fields exactly right).

The document is a long log of invented customer orders; the request names a customer and asks
for one JSON function call whose arguments must be copied out of that customer's order. The
answer is structured (several fields in a fixed JSON shape), unlike QA's single span.
"""

from __future__ import annotations

import json
import random
from typing import Any

from . import names
from .common import Example, Split, TokenCounter, distinct, fill, length_for, rng_for

ACTIONS = {"refund_order": "refund", "cancel_order": "cancel", "ship_replacement": "ship a replacement for"}

_RECORD = {
    "train": [
        "Order {order_id}: {customer} bought {quantity} x {product}, shipping to {city}.",
        "{customer} placed order {order_id} for {quantity} {product} units (destination {city}).",
    ],
    "calib": [
        "On file: order {order_id}, {quantity} of {product}, customer {customer}, deliver to {city}.",
        "Customer {customer} ({city}) ordered {product}, quantity {quantity}, reference {order_id}.",
    ],
    "heldout": [
        "[{order_id}] {customer} -> {city}: {product} (qty {quantity})",
        "A shipment of {quantity} {product} was ordered by {customer} for {city} under number {order_id}.",
    ],
}
# The train split asks in several ways (a schema, a signature, plain words), so that the variant
# learns the call format rather than one phrasing; calib and held-out wordings appear nowhere here.
_REQUEST = {
    "train": [
        ('Emit the tool call that would {verb} the order of {customer}. Reply with JSON '
         '{{"name": "{fn}", "arguments": {{"order_id", "product", "quantity", "city"}}}} only.'),
        "Tool: {fn}(order_id, product, quantity, city). Invoke it for the order of {customer}; output the JSON call only.",
        "We need to {verb} what {customer} ordered. Write the {fn} function call as JSON.",
        "Return a JSON function call of {fn} with the order details of {customer}.",
    ],
    "calib": ["Produce a JSON call to {fn} for the order placed by {customer}, with order_id, product, quantity and city."],
    "heldout": [("Call the function {fn}(order_id, product, quantity, city) for {customer}'s order. "
                 "Answer with the JSON call.")],
}


def _order(rng: random.Random) -> dict[str, Any]:
    return {
        "order_id": f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}-{rng.randint(1000, 99999)}",
        "customer": names.person(rng), "product": rng.choice(names.PRODUCTS),
        "quantity": rng.randint(1, 40), "city": names.city(rng),
    }


def reference_call(fn: str, order: dict[str, Any]) -> str:
    args = {k: order[k] for k in ("order_id", "product", "quantity", "city")}
    return json.dumps({"name": fn, "arguments": args})


def generate(split: Split, n: int, tokenizer: Any = None, seed: int = 0,
             lengths: tuple[int, int] | None = None, questions: int = 1) -> list[Example]:
    """``n`` logs, each with ``questions`` requests about distinct customers (consecutive rows share
    the context; with one request the rows are those of every earlier version)."""
    rng = rng_for(split, seed)
    count = TokenCounter(tokenizer)
    rows = []
    for i in range(n):
        orders, lines, total = fill(length_for(split, rng, lengths), count, lambda: _order(rng),
                                    lambda o: rng.choice(_RECORD[split]).format(**o), key=lambda o: o["customer"])
        gold = rng.choice(orders)
        fn = rng.choice(list(ACTIONS))
        context = f"Order log, warehouse {names.word(rng)}\n\n" + "\n".join(lines)
        prompt = rng.choice(_REQUEST[split]).format(verb=ACTIONS[fn], customer=gold["customer"], fn=fn)
        for j, gold in enumerate(distinct(rng, orders, lambda o: o["customer"], gold, questions)):
            if j:  # further requests draw after the first, so one-request rows never change
                fn = rng.choice(list(ACTIONS))
                prompt = rng.choice(_REQUEST[split]).format(verb=ACTIONS[fn], customer=gold["customer"], fn=fn)
            rows.append(Example(context, prompt, reference_call(fn, gold), "toolcall",
                                {"split": split, "approx_tokens": total, "index": i, "question": j}))
    return rows
