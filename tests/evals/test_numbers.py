import pytest

from kvmesh.evals.numbers import extract_flexible, extract_strict, normalize_number, numbers_equal


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("She has 5 apples.\n#### 72", "72", "72"),
        ("#### -3", "-3", "-3"),
        ("The loss is −12 dollars. The answer is −12.", "-12", "-12"),
        ("#### 1,234,567", "1234567", "1234567"),
        ("Total: $1,250.50\nThe answer is $1,250.50.", "1250.5", "1250.5"),
        ("The answer is 0.750", "0.75", "0.75"),
        ("So the rate is 25%. The answer is 25%.", "25", "25"),
        ("The final answer is: **42**", "42", "42"),
        ("Therefore \\boxed{18}.", "18", "18"),
        ("Half: \\boxed{\\frac{1}{2}}", "0.5", "0.5"),
        ("the answer is 3/4 of a pie", "0.75", "0.75"),
        ("One third is 1/3", None, "1/3"),
        ("First 10, then 20, finally 30 apples.", None, "30"),
        ("The answer is 8. Checking: 8 + 2 = 10", "8", "10"),
        ("#### 5\nExplanation mentions 7 and then the answer is 9", "9", "9"),
        ("We get 3, 4 and 5", None, "5"),
        ("No numbers here.", None, None),
        ("", None, None),
        ("It costs $5.", None, "5"),
        ("Temperature fell to -4.5 degrees", None, "-4.5"),
        ("Divide by 0/0 is undefined; answer 7", None, "7"),
        ("\\boxed{1{,}000}", "1000", "1000"),
        ("The answer is .5", "0.5", "0.5"),
        ("between 10-15 apples", None, "15"),
        ("between 10 - 15 apples", None, "15"),
        ("COVID-19", None, "19"),
        ("The answer is $-5.50", "-5.5", "-5.5"),
        ("-$5.50", None, "-5.5"),
        ("\\boxed{\\$18}", "18", "18"),
        ("\\boxed{18\\%}", "18", "18"),
        ("\\boxed{18 \\text{ apples}}", "18", "18"),
        ("The answer is 1,000.", "1000", "1000"),
        ("#### 12.", "12", "12"),
        ("1" * 4400, None, None),  # degenerate output: no number, and no crash
    ],
)
def test_extractors(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1000", "1000", True),
        (normalize_number("1,000.0"), "1000", True),
        (normalize_number("0.5"), normalize_number("1/2"), True),
        (normalize_number("2/4"), "1/2", True),
        ("-3", "3", False),
        ("0.1", "0.10000001", False),
        (None, "1", False),
        (None, None, False),
    ],
)
def test_numbers_equal(a, b, equal):
    assert numbers_equal(a, b) is equal


def test_normalize_rejects_non_numbers():
    assert normalize_number("abc") is None
    assert normalize_number("1/0") is None
    assert normalize_number("-0") == "0"
    assert normalize_number("$ 12.") == "12"
    assert normalize_number("100000000000000000000000000000.5") == "100000000000000000000000000000.5"  # exact
    assert normalize_number("-0.75") == "-0.75" and normalize_number("0.05") == "0.05"
