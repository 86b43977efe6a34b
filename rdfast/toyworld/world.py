"""The toy world's fixed vocabulary: prompts (count x colour x shape), their words, and the in-domain / OOD split.

Everything here is plain data fixed by issue 13, so that results from different runs and sessions compare.
"""
from __future__ import annotations

import dataclasses
import itertools

SIZE = 64  #: images are SIZE x SIZE RGB
BACKGROUND = (255, 255, 255)
COUNTS = (1, 2, 3)
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
#: flat fill colours, exact RGB
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (235, 190, 20)}
SHAPES = ("circle", "square", "triangle")
#: held-out (colour, shape) combinations, at any count: never in training or warm-up data
OOD_COMBOS = frozenset({("red", "triangle"), ("green", "square"), ("blue", "circle")})
ATTRIBUTES = ("count", "colour", "shape")


@dataclasses.dataclass(frozen=True, order=True)
class Prompt:
    """One prompt of the world: ``count`` in 1-3, ``colour`` in COLOURS, ``shape`` in SHAPES.

    ``str(prompt)`` is its text ("one red circle", "two blue squares"); ``Prompt.parse`` reads it back.
    """
    count: int
    colour: str
    shape: str

    def __post_init__(self):
        if self.count not in COUNTS:
            raise ValueError(f"count {self.count!r} is not one of {COUNTS}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {tuple(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {SHAPES}")

    @property
    def text(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun}"

    def __str__(self) -> str:
        return self.text

    @property
    def ood(self) -> bool:
        """True for a held-out (OOD) colour-shape combination."""
        return (self.colour, self.shape) in OOD_COMBOS

    def replace(self, **changes) -> "Prompt":
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, text: "str | Prompt") -> "Prompt":
        """The Prompt of a text such as "two blue squares" (ValueError naming the text otherwise)."""
        if isinstance(text, Prompt):
            return text
        words = str(text).strip().lower().split()
        numbers = {w: n for n, w in COUNT_WORDS.items()}
        if len(words) != 3 or words[0] not in numbers:
            raise ValueError(f"prompt {text!r} is not 'COUNT COLOUR SHAPE' (e.g. 'two blue squares')")
        count, colour, noun = numbers[words[0]], words[1], words[2]
        shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
        prompt = cls(count, colour, shape)
        if prompt.text != " ".join(words):
            raise ValueError(f"prompt {text!r} is not in the world's word form (expected {prompt.text!r})")
        return prompt


ALL_PROMPTS = tuple(Prompt(n, c, s) for n, c, s in itertools.product(COUNTS, COLOURS, SHAPES))


def prompts(split: str = "in_domain") -> list[Prompt]:
    """The world's prompts in a fixed order: ``"in_domain"`` (27), ``"ood"`` (9) or ``"all"`` (36)."""
    if split == "in_domain":
        return [p for p in ALL_PROMPTS if not p.ood]
    if split == "ood":
        return [p for p in ALL_PROMPTS if p.ood]
    if split == "all":
        return list(ALL_PROMPTS)
    raise ValueError(f"split {split!r} is not 'in_domain', 'ood' or 'all'")
