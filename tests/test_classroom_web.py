"""support/classroom_web.py: deterministic, labelled, and shaped the way the corpus loop needs."""

import re
from collections import Counter

from support.classroom_web import MATH_STYLES, compute, generate_web, write_web
from support.fileio import read_jsonl

QUOTED = [("Ann has 12 apples. She gives 5 to Bo. How many apples does Ann have now?",
           "Ann gives 5 away: 12 - 5 = 7.\nThe answer is \\boxed{7}."),
          ("Cal reads 9 pages a day for 4 days. How many pages does he read?",
           "Pages in 4 days: 9 * 4 = 36.\nThe answer is \\boxed{36}.")]


def test_same_seed_same_web_other_seed_other_web():
    assert generate_web(3, 600, 50, QUOTED, 4) == generate_web(3, 600, 50, QUOTED, 4)
    assert generate_web(3, 600, 50)[1] != generate_web(4, 600, 50)[1]


def test_labels_styles_and_seed_coverage():
    seeds, pool = generate_web(0, 4000, 200, QUOTED, 6)
    assert {p["style"] for p in seeds} == {"worked"}  # the seed knows one style
    assert set(MATH_STYLES) <= {p["style"] for p in pool}
    assert all(p["is_math"] == (p["style"] in MATH_STYLES) for p in pool)
    assert 0.05 < sum(p["is_math"] for p in pool) / len(pool) < 0.3  # math is a minority, as on the web
    seed_domains = {p["url"].split("/")[2] for p in seeds}
    math_domains = {p["url"].split("/")[2] for p in pool if p["is_math"]}
    assert math_domains - seed_domains  # there are math domains for discovery to find
    assert not {p["url"] for p in seeds} & {p["url"] for p in pool}


def test_planted_pages():
    _, pool = generate_web(0, 3000, 10, QUOTED, 6)
    quoting = [p for p in pool if p["contaminated"]]
    assert len(quoting) == 6 and all(p["is_math"] for p in quoting)
    assert all(any(q in p["text"] and s in p["text"] for q, s in QUOTED) for p in quoting)
    assert not any(q in p["text"] for p in pool if not p["contaminated"] for q, _ in QUOTED)
    urls = Counter(p["url"] for p in pool)
    assert sum(n - 1 for n in urls.values()) == sum(p["near_duplicate"] and not p["url"].startswith("https://mirror.")
                                                    for p in pool)  # every URL repeat is labelled
    assert any(p["url"].startswith("https://mirror.") and p["near_duplicate"] for p in pool)


def test_arithmetic_is_correct():
    """Every "a op b = c" and "a plus b is c" the web writes is true: it is meant to teach arithmetic."""
    _, pool = generate_web(1, 2000, 10)
    symbols = [m for p in pool for m in re.findall(r"\b(\d+) ([-+*/]) (\d+) = (\d+)\b", p["text"])]
    words = {"plus": "+", "minus": "-", "times": "*", "divided by": "/"}
    worded = [(a, words[op], b, c) for p in pool for a, op, b, c in re.findall(
        r"\b(\d+) (plus|minus|times|divided by) (\d+) (?:is|makes|gives you) (\d+)\b(?! times| plus| minus)", p["text"])]
    assert len(symbols) > 500 and len(worded) > 200
    assert all(compute(int(a), op, int(b)) == int(c) for a, op, b, c in symbols + worded
               if not (op == "/" and int(a) % int(b)))  # "22 divided by 4 is 5 with remainder 2"
    assert all(int(a) % int(b) == 0 for a, op, b, c in symbols if op == "/")


def test_write_web_shards_the_pool(tmp_path):
    seed_path, pool_paths = write_web(str(tmp_path), 0, 500, 20, 3)
    assert len(list(read_jsonl(seed_path))) == 20
    assert len(pool_paths) == 3
    sizes = [len(list(read_jsonl(p))) for p in pool_paths]
    assert sum(sizes) == len(generate_web(0, 500, 20)[1]) and max(sizes) - min(sizes) <= 1
