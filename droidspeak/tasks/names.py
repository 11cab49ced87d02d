"""Invented names, places and organisations, so no answer can come from pretraining."""

from __future__ import annotations

import random

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "h", "j", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st",
           "t", "th", "v", "w", "z", "sh", "ch"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_CODAS = ["", "n", "r", "l", "s", "th", "nd", "m", "x", "sk", "rt"]


def word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    n = rng.randint(*syllables)
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n)).capitalize()


def person(rng: random.Random) -> str:
    return f"{word(rng, (1, 2))} {word(rng, (2, 3))}"


def city(rng: random.Random) -> str:
    return word(rng, (2, 3)) + rng.choice(["", "", "ford", "heim", "vale", "port", "grad", "mouth", "ton"])


_ORG_KINDS = ["Works", "Institute", "Labs", "Guild", "Company", "Foundry", "Trust", "Collective"]


def org(rng: random.Random) -> str:
    return f"{word(rng, (2, 2))} {rng.choice(_ORG_KINDS)}"


JOBS = ["glassblower", "cartographer", "beekeeper", "archivist", "ferry pilot", "clockmaker", "botanist",
        "stonemason", "radio engineer", "translator", "violin maker", "surveyor", "chemist", "librarian",
        "lighthouse keeper", "tailor", "geologist", "baker", "sculptor", "pharmacist"]
PRODUCTS = ["desk lamp", "kettle", "bicycle pump", "umbrella", "backpack", "wall clock", "teapot", "toaster",
            "hiking boot", "fountain pen", "garden hose", "camera bag", "rain jacket", "telescope", "notebook"]
