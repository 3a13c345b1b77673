"""Write sample_data/support_intents.jsonl: customer-support messages labelled with their intent.

The messages are composed here from templates with varied phrasing, names, products, order
numbers and a few typos, so the data set belongs to the project. The output is deterministic for a
given seed: `python sample_data/generate.py` rewrites the committed file byte for byte.

    python sample_data/generate.py [--seed 2402] [--per-intent 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

# Short natural-language labels, so a small LM can score them as answers.
CANCEL = "cancel an order"
TRACK = "track a package"
REFUND = "get a refund"
ADDRESS = "change the address"
PASSWORD = "reset a password"
BILLING = "question about a charge"
PRODUCT = "question about a product"
LABELS = [CANCEL, TRACK, REFUND, ADDRESS, PASSWORD, BILLING, PRODUCT]

PRODUCTS = [
    "blender", "smart watch", "desk lamp", "phone case", "coffee grinder", "yoga mat",
    "winter jacket", "bluetooth speaker", "office chair", "water bottle", "backpack",
    "electric kettle", "wireless mouse", "air fryer", "bookshelf", "travel pillow", "toaster",
    "gaming headset", "baby monitor", "standing desk", "hair dryer", "camping tent",
]
NAMES = [
    "Maria", "Tom", "Aisha", "Kenji", "Lucia", "Omar", "Priya", "Ben", "Sofia", "Dmitri",
    "Grace", "Mateo", "Chloe", "Yusuf", "Hannah", "Luca", "Zoe", "Ravi", "Emma", "Jonas",
]
CITIES = [
    "Leeds", "Porto", "Austin", "Lyon", "Toronto", "Melbourne", "Dublin", "Denver", "Utrecht",
    "Glasgow", "Seattle", "Bristol", "Valencia", "Calgary",
]
STREETS = ["Oak Street", "Mill Lane", "Harbour Road", "Elm Avenue", "Station Road", "King St"]
DAYS = ["two days", "three days", "a week", "ten days", "five days", "over a week"]
AMOUNTS = ["$12.99", "$45", "$89.50", "$23.10", "$150", "$7.99", "$64.00", "€30", "£18.40"]

GREETINGS = ["", "", "Hi, ", "Hello, ", "Hey there, ", "Good morning, ", "Hi team, ", "Hello support, "]
CLOSINGS = ["", "", "", " Thanks!", " Thank you.", " Thanks in advance.", " Cheers, {name}",
            " Please help.", " Regards, {name}"]

TEMPLATES: dict[str, list[str]] = {
    CANCEL: [
        "I ordered the wrong {product} by mistake, can you cancel order {order} before it ships?",
        "Please cancel my order {order}. I don't need the {product} anymore.",
        "I want to cancel the {product} I bought this morning.",
        "Changed my mind about the {product}, please stop the order and don't send it.",
        "How do I cancel an order I placed an hour ago? It's #{order}.",
        "Can you call off order {order}? I found the {product} cheaper elsewhere.",
        "I accidentally ordered the {product} twice, please cancel one of them.",
        "Is it too late to cancel order {order}? It hasn't shipped yet.",
        "Cancel the {product} order please, I placed it twice by accident.",
        "I no longer want order {order}, please cancel it and don't charge me.",
        "Please don't ship the {product}, I want to cancel the purchase.",
        "Need to cancel the order I just made for the {product}.",
    ],
    TRACK: [
        "Where is my {product}? Order {order} was supposed to arrive {days} ago.",
        "Can you tell me where my package is? The order number is {order}.",
        "My {product} still hasn't arrived and the tracking page shows nothing.",
        "Any update on the delivery of order {order}? It's been {days}.",
        "The tracking number for my {product} doesn't work, where is my parcel?",
        "When will my {product} be delivered? I ordered it {days} ago.",
        "Has order {order} shipped yet? I'd like to know when it will get to {city}.",
        "My parcel seems stuck in transit for {days}, can you check where it is?",
        "I haven't received my {product} yet, can you track it for me?",
        "Tracking says delivered but there's no {product} at my door. Where is it?",
        "How can I follow the shipment of order {order}?",
        "Is my package on its way? Waiting for the {product} for {days} now.",
    ],
    REFUND: [
        "I returned the {product} {days} ago and still haven't got my money back.",
        "The {product} arrived broken, I want a refund please.",
        "Can I get my money back for order {order}? The {product} doesn't fit.",
        "I sent back the {product}, when will the refund reach my card?",
        "The {product} stopped working after {days}. I'd like a full refund.",
        "Please refund the {amount} for the {product}, it was not as described.",
        "How long do refunds take? I returned order {order} last week.",
        "I want to return the {product} and be reimbursed.",
        "You promised a refund for the damaged {product} but nothing came through.",
        "Refund please for order {order}, the {product} was the wrong colour.",
        "The {product} is faulty, can I return it for my money back?",
        "Still waiting on the {amount} refund for the {product} I returned.",
    ],
    ADDRESS: [
        "I moved to {city}, can you send order {order} to my new address?",
        "Please change the delivery address for the {product} to {number} {street}.",
        "I typed the wrong address for order {order}, it should be {number} {street}, {city}.",
        "Can I update my shipping address before the {product} ships?",
        "Wrong street on my order! Please deliver to {number} {street} instead.",
        "I need to change where my {product} is delivered, I'll be in {city} next week.",
        "How do I edit the address on order {order}?",
        "Please ship the {product} to my office at {number} {street} rather than my home.",
        "My address has a typo, the house number is {number}, not {number2}.",
        "Could you redirect order {order} to {city}? I'm no longer at the old address.",
        "Update my delivery address to {number} {street}, {city} please.",
        "Can the {product} be sent to a different address than the one on the order?",
    ],
    PASSWORD: [
        "I forgot my password and can't log in to my account.",
        "The password reset email never arrives, how do I get back into my account?",
        "Can you help me reset my password? The login page keeps saying it's wrong.",
        "I'm locked out of my account after too many login attempts.",
        "How do I change my password? I think someone else knows it.",
        "The reset link says it expired, I still can't sign in.",
        "I can't remember my login details, please help me reset them.",
        "My account won't accept my password anymore, I want to set a new one.",
        "I need a new password, the old one doesn't work since the update.",
        "Please send me a password reset link, I can't access my orders.",
        "Sign in fails every time even though I'm sure the password is right. Can I reset it?",
        "How can I recover my account? I lost the password and changed my phone.",
    ],
    BILLING: [
        "Why was I charged {amount} twice for order {order}?",
        "There is a charge of {amount} on my card that I don't recognise.",
        "My invoice shows {amount} but the {product} was on sale for less.",
        "I was billed for a subscription I cancelled last month.",
        "Can you explain the extra {amount} fee on my statement?",
        "I paid for the {product} but the card was charged {amount} more than the price.",
        "Where can I download the invoice for order {order}?",
        "Why does my bank show a pending charge from you when I didn't order anything?",
        "The shipping fee on order {order} looks wrong, I was told delivery was free.",
        "I see a payment of {amount} to your company that I never authorised.",
        "My credit card was charged before the {product} even shipped, is that normal?",
        "Could you check the {amount} charge on my account? It seems to be a mistake.",
    ],
    PRODUCT: [
        "Does the {product} come with a warranty?",
        "Is the {product} available in a larger size?",
        "What colours does the {product} come in?",
        "Can the {product} be used outdoors in the rain?",
        "Is the {product} compatible with my older model, or do I need an adapter?",
        "How heavy is the {product}? I need to carry it around.",
        "Will the {product} be back in stock soon?",
        "What is the difference between the two {product} models on your site?",
        "Does the {product} need batteries or does it plug in?",
        "Are the materials of the {product} safe for children?",
        "How do I clean the {product} properly?",
        "Is the {product} quiet enough for a small apartment?",
    ],
}


def _typo(rng: random.Random, text: str) -> str:
    """One plausible slip: two swapped letters, a dropped letter, or a doubled letter."""
    positions = [i for i in range(1, len(text) - 2) if text[i].isalpha() and text[i + 1].isalpha()]
    if not positions:
        return text
    i = rng.choice(positions)
    kind = rng.randrange(3)
    if kind == 0:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if kind == 1:
        return text[:i] + text[i + 1 :]
    return text[:i] + text[i] + text[i:]


def _message(rng: random.Random, template: str) -> str:
    number = rng.randrange(2, 240)
    body = template.format(
        product=rng.choice(PRODUCTS),
        order=f"{rng.randrange(10_000, 99_999)}",
        days=rng.choice(DAYS),
        city=rng.choice(CITIES),
        street=rng.choice(STREETS),
        number=number,
        number2=number + rng.randrange(1, 9),
        amount=rng.choice(AMOUNTS),
    )
    greeting = rng.choice(GREETINGS)
    if greeting and not re.match(r"I\b", body):
        body = body[0].lower() + body[1:]
    text = greeting + body + rng.choice(CLOSINGS).format(name=rng.choice(NAMES))
    roll = rng.random()
    if roll < 0.15:
        text = text.lower()
    elif roll < 0.25:
        text = text.rstrip(".!?")
    if rng.random() < 0.2:
        text = _typo(rng, text)
    return text


def generate(seed: int, per_intent: int) -> list[dict]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for label in LABELS:
        templates = TEMPLATES[label]
        made = 0
        attempts = 0
        while made < per_intent:
            attempts += 1
            if attempts > per_intent * 50:
                raise SystemExit(f"cannot make {per_intent} distinct messages for {label!r}")
            # Cycle through the templates so every phrasing is represented evenly.
            text = _message(rng, templates[made % len(templates)])
            if text in seen:
                continue
            seen.add(text)
            rows.append((text, label))
            made += 1
    rng.shuffle(rows)
    return [
        {"id": f"msg-{i:04d}", "input": text, "target": label, "choices": LABELS}
        for i, (text, label) in enumerate(rows, start=1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2402)
    parser.add_argument("--per-intent", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("support_intents.jsonl")
    )
    args = parser.parse_args()
    records = generate(args.seed, args.per_intent)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
