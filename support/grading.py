"""Answer extraction and equivalence: the final answer a solution states, and whether it equals
the gold answer.

DeepSeekMath grades GSM8K and MATH by the final answer (paper section 3.2.1: the answer in
\\boxed{} or after "The answer is"), and its RL reward for those benchmarks is that same check
(section 4: a rule-based outcome reward). This file holds the two pure functions behind that,
`extract_answer` and `answers_equal`; evaluate.py's Grader runs them in worker processes
(math-verify's time limit needs a main thread) and computes the metrics. Both take any string a
model can write: extraction is linear in the response's length and an answer longer than any
gold answer is graded wrong without parsing, so neither can be made to hang or raise.

Tests: pytest -q tests/test_evaluate.py tests/test_grader_fuzz.py
"""

import re
from fractions import Fraction

import numpy as np
from math_verify import parse, verify

# No gold answer of GSM8K, MATH or ours is near this long; a longer "answer" is not one, and
# parsing it (sympy, or Python's int(), which refuses over 4,300 digits) is what we must avoid.
MAX_ANSWER_CHARS = 1000


def as_text(text):
    """Model output as str: bytes with invalid or partial UTF-8, and lone surrogates, become
    U+FFFD instead of raising later (in a regex, in a pipe, in JSON)."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    return text.encode("utf-8", errors="replace").decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BOXED_TOKEN = re.compile(r"[^\s$]+")  # MATH's rare `\boxed 5`
_GSM8K_ANSWER = re.compile(r"####\s*([-$\\\d.].*)")  # a number follows; "#### Step 2" is a markdown heading
_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$+(.+?)\$+")
# "$15" not closed by a "$" right after its number: money, not LaTeX's $...$
_MONEY = re.compile(r"\\?\$\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![\d,.]*\$)")
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")  # "5-3": 3, not -3


def last_boxed(text):
    """Content of the last complete \\boxed{...} or \\fbox{...} (braces may nest), or of
    `\\boxed 5`; None when there is none. A box left open (the output was cut off) is skipped.

    Linear time: scanning from each box to its closing brace would be quadratic in a response
    of many unclosed boxes. Instead the brace depth after every character is computed once; the
    brace opened at p closes at the first later position whose depth is below depth[p], and the
    lowest depth after each position says at once whether there is one.
    """
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    depth = np.cumsum((codes == ord("{")).astype(np.int32) - (codes == ord("}")))
    lowest_after = np.minimum.accumulate(depth[::-1])[::-1]
    for start in reversed(starts):
        if text.startswith("{", start):
            if start + 1 < len(text) and lowest_after[start + 1] < depth[start]:
                end = start + 1 + int(np.argmax(depth[start + 1 :] < depth[start]))
                return text[start + 1 : end].strip()
            continue
        token = _BOXED_TOKEN.match(text, start)
        if token:
            return token.group(0)
    return None


def _after_answer_is(line):
    """'$\\frac12$. I hope it is correct.' -> '\\frac12'; '18 dollars.' -> '18 dollars';
    '$15, because $20 - $5 = $15.' -> '15' (money: the amount after the sentence's last '=')."""
    line = line[:MAX_ANSWER_CHARS]  # bounds the backtracking of _MATH_SPAN on a line of $ signs
    if _MONEY.match(line):
        sentence = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
        return (_MONEY.findall(sentence.rpartition("=")[2]) or _MONEY.findall(line))[0]
    span = _MATH_SPAN.search(line)
    if span:
        return span.group(1).strip()
    return re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip()


def extract_answer(text):
    """The final answer a solution states, as a string, or None when it states none.

    In order: the last \\boxed{...} (our chat format and MATH's solutions), GSM8K's `#### N`,
    "The answer is ..." (the few-shot format of GSM8K; MATH's Minerva prompt says "The final
    answer is $...$"), and as a fallback the last number in the text.
    """
    text = as_text(text)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    for pattern in (_GSM8K_ANSWER, _ANSWER_IS):
        matches = pattern.findall(text)
        answer = _after_answer_is(matches[-1]) if matches else None
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


# ---------------------------------------------------------------------------------------------
# Answer equivalence
# ---------------------------------------------------------------------------------------------
# Deciding that "\dfrac{3}{4}", "0.75" and "3/4" are one answer, that "\{1,2\}" equals
# "\{2,1\}", "(1,2]" differs from "[1,2]", "x=3" answers "3", "2\sqrt{3}" is "\sqrt{12}" and
# "5\text{ cm}" is "5", is a long tail of LaTeX and algebra. math-verify (Hugging Face) does it for
# us: `parse` turns LaTeX or plain text into a sympy object (it knows \frac, \dfrac, \sqrt, \%,
# \text{units}, ^\circ, thousands separators, sets, intervals, tuples, matrices, equations), and
# `verify(gold, answer)` compares two of them by string, by numbers (rounded to 6 decimals) and
# by symbolic simplification. sympy can take very long on a hostile expression, so math-verify
# bounds each call with signal.alarm - which works only in a process's main thread; hence
# evaluate.py's Grader runs it in worker processes.

_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|-?\.\d+")
_FRACTION = re.compile(r"(-?)\\[dt]?frac(?:\{(-?\d+)\}\{(\d+)\}|(\d)(\d))|(-?\d+)/(\d+)")  # \frac{-3}{4}, \frac12, 3/4
_UNITS = re.compile(r"(-?[\d,.]*\d)\s+[A-Za-z]{2,}[A-Za-z ]*")  # "18 dollars", "5 apples" -> the number
_SCALES = re.compile(r"\b(?:hundreds?|thousands?|millions?|billions?|trillions?|pi)\b", re.IGNORECASE)  # not units


def _clean(answer):
    """Strip what only dresses an answer: $ delimiters, a dollar sign, a final period, units."""
    answer = re.sub(r"\\[,;:! ]", "", answer)  # LaTeX spacing, e.g. the thin space of 1\,000
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"^(-?)\\?\$\s*", r"\1", answer)  # "\$18", "$18", "-$5" (currency)
    answer = answer.rstrip(".").strip()
    units = _UNITS.fullmatch(answer)
    return units.group(1) if units and not _SCALES.search(answer) else answer  # "10 million" is not 10


def _rational(answer):
    """The exact value of a plain number or fraction: '1,234.5' -> 2469/2, '-\\frac{3}{4}' -> -3/4;
    None for anything else (radicals, expressions, sets, ...) and for numbers too long for int()."""
    try:
        if _PLAIN_NUMBER.fullmatch(answer):
            return Fraction(answer.replace(",", "").rstrip("."))
        fraction = _FRACTION.fullmatch(answer)
        if not fraction:
            return None
        sign, *parts = fraction.groups()
        numerator, denominator = [int(p) for p in parts if p is not None]
    except ValueError:
        return None
    return (-1 if sign else 1) * Fraction(numerator, denominator) if denominator else None


def _too_long(answer):
    return answer is None or len(answer) > MAX_ANSWER_CHARS


def answers_equal(answer, gold, timeout=3):
    """Whether `answer` states the same mathematical value as `gold` (both extracted strings).

    Plain numbers and fractions (all of GSM8K's answers and ours, many of MATH's) are compared
    exactly here, in microseconds: 0.75 = 3/4, but 0.333333 is not 1/3 (math-verify, which
    rounds to 6 decimals, would accept it). Everything else goes to math-verify (its LaTeX
    parser takes tens of milliseconds), with `timeout` seconds per parse or comparison. It uses
    signal.alarm: call this from a main thread (the Grader does). Never raises: what
    math-verify cannot handle is unequal.
    """
    if _too_long(answer) or _too_long(gold):  # maj@k compares two answers, either may be the long one
        return False
    answer, gold = _clean(answer), _clean(gold)
    if answer == gold:
        return True
    answer_value, gold_value = _rational(answer), _rational(gold)
    if answer_value is not None and gold_value is not None:
        return answer_value == gold_value
    try:
        parsed_gold = parse(f"${gold}$", parsing_timeout=timeout)
        parsed_answer = parse(f"${answer}$", parsing_timeout=timeout)
        return bool(parsed_gold and parsed_answer and verify(parsed_gold, parsed_answer, timeout_seconds=timeout))
    except Exception:  # sympy's errors on hostile input are many and undocumented
        return False


def needs_math_verify(answer, gold):
    """False when answers_equal decides without sympy (numbers, fractions, identical strings)."""
    if _too_long(answer) or _too_long(gold):
        return False
    answer, gold = _clean(answer), _clean(gold)
    return answer != gold and (_rational(answer) is None or _rational(gold) is None)
