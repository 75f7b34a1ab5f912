"""Numeric answer extraction for math benchmarks (GSM8K), with two named extractors, as users report them.

- `strict`: the number after an explicit final-answer marker: `#### N`, "the answer is N", or `\\boxed{N}`
  (the last marker in the text wins).
- `flexible`: the last number anywhere in the text.

Numbers may carry a sign (ASCII or Unicode minus), `$`, thousands separators, decimals, a `%` sign, a trailing
period, or be fractions (`3/4`, `\\frac{3}{4}`). Each is normalised to a canonical string (`"1234"`, `"0.75"`,
`"1/3"`) and compared exactly as a fraction, so "1,000.0" equals "1000" and "0.5" equals "1/2".

Caveat: a `%` is dropped ("25%" reads as 25), which is what GSM8K's gold answers mean; a thousands separator
must group digits by three, so "3,4" is read as two numbers.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# A sign only where it cannot be a hyphen ("10-15", "COVID-19"); `$` on either side of it; ".5" allowed.
_NUMBER = r"(?<![\w.])(?:\$\s?)?[-−]?(?:\$\s?)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:\s?/\s?\d+)?%?"
MAX_NUMBER_CHARS = 64  # longer digit runs are degenerate output, not answers
_NUMBER_RE = re.compile(_NUMBER)
_FRAC_RE = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
_STRICT_RES = (
    re.compile(r"####\s*(?:\*\*)?\s*(" + _NUMBER + ")"),
    re.compile(r"answer\s+is\s*[:：]?\s*(?:\*\*)?\s*(" + _NUMBER + ")", re.IGNORECASE),
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
)


def normalize_number(text: str) -> str | None:
    """Canonical string of one number, or None if `text` is not a number."""
    cleaned = text.strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    cleaned = cleaned.rstrip(".").rstrip("%")
    if len(cleaned) > MAX_NUMBER_CHARS:
        return None
    try:
        if "/" in cleaned:
            numerator, denominator = cleaned.split("/")
            if int(denominator) == 0:
                return None
            value = Fraction(int(numerator), int(denominator))
        else:
            value = Fraction(Decimal(cleaned))
    except (ValueError, InvalidOperation, ZeroDivisionError):
        return None
    return _canonical(value)


def _canonical(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:  # not a finite decimal: keep the fraction
        return f"{value.numerator}/{value.denominator}"
    places = 0  # exact: scale by 10**places until whole, with no rounding through Decimal's precision
    while (value * 10**places).denominator != 1:
        places += 1
    digits = str(abs(value.numerator * 10**places // value.denominator)).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _prepare(text: str) -> str:
    """Undo LaTeX number markup: \\frac{a}{b}, 1{,}000, \\$, \\%, \\text{units}."""
    text = _FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    text = text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    return re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", "", text)


def extract_strict(text: str) -> str | None:
    """The number after the last final-answer marker (`#### N`, "the answer is N", `\\boxed{N}`)."""
    text = _prepare(text)
    found = [(m.start(), m.group(1)) for pattern in _STRICT_RES for m in pattern.finditer(text)]
    return normalize_number(max(found)[1]) if found else None


def extract_flexible(text: str) -> str | None:
    """The last number in the text."""
    for match in reversed(list(_NUMBER_RE.finditer(_prepare(text)))):
        value = normalize_number(match.group(0))
        if value is not None:
            return value
    return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Exact equality of two normalised numbers; None never equals anything."""
    if a is None or b is None:
        return False
    return _as_fraction(a) == _as_fraction(b)


def _as_fraction(value: str) -> Fraction:
    if "/" in value:
        numerator, denominator = value.split("/")
        return Fraction(int(numerator), int(denominator))
    return Fraction(Decimal(value))
