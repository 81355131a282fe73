"""The seeded hash every backend uses for its random choices, defined once.

Member-level bounding keeps at most ``max_groups`` groups per member and (for
quantiles) at most ``max_rows_per_group`` values per member and group,
chosen "at random". The choice is the smallest draws of a hash of the
per-query seed and the member's own values, never of other members' rows, so
adding or removing one member changes no one else's choice (what the
sensitivity proof needs). Every backend must draw the same numbers so that
their bounded aggregates are equal: the hash is written here once, over a
tiny integer algebra (``Arithmetic``) that each backend implements with its
own column expressions (Polars ``UInt64``, Spark signed ``LONG``; both wrap
modulo 2⁶⁴, so the bits agree), and once over Python integers as the
reference the tests compare both with.

The mixer is SplitMix64's finaliser (a bijection on 64-bit words). Text is
read as its UTF-8 bytes in hex, cut into 7-byte chunks (56 bits, so every
chunk parses to a non-negative signed 64-bit integer on every engine).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

WORD = 2**64
GOLDEN = 0x9E3779B97F4A7C15
"""Odd constant (2⁶⁴/φ) spreading chunk positions and lengths over the word."""
_MIX_SHIFTS = (30, 27, 31)
_MIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
NULL_WORD = 0x5851F42D4C957F2D
"""What a NULL member or key hashes to (NULL is one value, like any other)."""
HEX_DIGITS_PER_CHUNK = 14
"""Hex digits (7 bytes) per chunk of text."""

E = TypeVar("E")


class Arithmetic(Protocol[E]):
    """64-bit word arithmetic over a backend's column expressions, wrapping modulo 2⁶⁴."""

    def constant(self, value: int) -> E:
        """The word ``value`` (given in ``[0, 2⁶⁴)``)."""

    def xor(self, left: E, right: E) -> E: ...

    def add(self, left: E, right: E) -> E: ...

    def times(self, word: E, constant: int) -> E:
        """``word × constant`` modulo 2⁶⁴ (``constant`` in ``[0, 2⁶⁴)``)."""

    def shift_right(self, word: E, bits: int) -> E:
        """Logical (unsigned) shift."""


def mix(word: E, ops: Arithmetic[E]) -> E:
    """SplitMix64's finaliser: every input bit moves about half of the output bits.

    It repeats its input eight times in the expression it builds: pass a
    column reference, not a large expression (backends bind each step's
    input to a column first, else the expression tree grows eightfold per step).
    """
    first, second, third = _MIX_SHIFTS
    word = ops.times(ops.xor(word, ops.shift_right(word, first)), _MIX_MULTIPLIERS[0])
    word = ops.times(ops.xor(word, ops.shift_right(word, second)), _MIX_MULTIPLIERS[1])
    return ops.xor(word, ops.shift_right(word, third))


def chunk_input(chunk: E, position: E, ops: Arithmetic[E]) -> E:
    """What is mixed for one text chunk (``position`` counts from 0); a text's chunk sum adds up the mixes."""
    return ops.add(chunk, ops.times(ops.add(position, ops.constant(1)), GOLDEN))


def text_input(chunk_sum: E, byte_length: E, ops: Arithmetic[E]) -> E:
    """What is mixed into a text's word: the wrapping sum of its chunks' mixes, and its length in bytes."""
    return ops.add(chunk_sum, ops.times(byte_length, GOLDEN))


def draw_steps(seed: int, words: Sequence[E], state: E, ops: Arithmetic[E]) -> Iterator[E]:
    """The expressions computing a draw, one per word: bind each to the column ``state`` refers to before the next.

    The first mixes the seed with the first word; the last also keeps the top 63 bits (``draw_end``).
    """
    current = draw_start(seed, ops)
    for position, word in enumerate(words):
        mixed = mix(draw_step(current, word, ops), ops)
        yield draw_end(mixed, ops) if position == len(words) - 1 else mixed
        current = state


def draw_start(seed: int, ops: Arithmetic[E]) -> E:
    """The state before any word: the per-query seed."""
    return ops.constant(seed % WORD)


def draw_step(state: E, word: E, ops: Arithmetic[E]) -> E:
    """What is mixed into the next state: the state and the next word (member, then keys, or value and copy)."""
    return ops.xor(state, word)


def draw_end(state: E, ops: Arithmetic[E]) -> E:
    """The draw: the state's top 63 bits, a non-negative signed integer too, so every engine orders draws alike."""
    return ops.shift_right(state, 1)


class PythonWords:
    """The reference: ``Arithmetic`` over Python integers."""

    def constant(self, value: int) -> int:
        return value % WORD

    def xor(self, left: int, right: int) -> int:
        return left ^ right

    def add(self, left: int, right: int) -> int:
        return (left + right) % WORD

    def times(self, word: int, constant: int) -> int:
        return (word * constant) % WORD

    def shift_right(self, word: int, bits: int) -> int:
        return word >> bits


def reference_word(value: object) -> int:
    """The word of one value as every backend computes it: integers as themselves, text by its chunks, NULL fixed."""
    ops = PythonWords()
    if value is None:
        return NULL_WORD
    if isinstance(value, bool | int):
        return int(value) % WORD
    if isinstance(value, str):
        digits = value.encode("utf-8").hex()
        chunks = [int(digits[i : i + HEX_DIGITS_PER_CHUNK], 16) for i in range(0, len(digits), HEX_DIGITS_PER_CHUNK)]
        total = sum(mix(chunk_input(chunk, position, ops), ops) for position, chunk in enumerate(chunks)) % WORD
        return mix(text_input(total, len(digits) // 2, ops), ops)
    raise TypeError(f"no word for a {type(value).__name__}")


def reference_draw(seed: int, values: Sequence[object]) -> int:
    """The draw of plain values, for tests."""
    ops = PythonWords()
    state = draw_start(seed, ops)
    for value in values:
        state = mix(draw_step(state, reference_word(value), ops), ops)
    return draw_end(state, ops)
