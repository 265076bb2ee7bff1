"""corpus.py: the whole pipeline on a small classroom web (the loop's recall rises, final
precision/recall >= 0.9, discovery finds unseeded math domains, decontamination removes exactly
the planted pages), the same pipeline on WET / JSONL / Parquet page files, the same result under
a 2-process torchrun, and its parts against independent computations."""

import glob
import gzip
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import corpus
from support import config, shards, tasks
from support.fileio import BadInput, read_jsonl, write_jsonl
from support.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A web small enough for a test (the default is 30,000 pages) that still shows every effect.
SMALL = ["--web_pool_pages=8000", "--web_seed_pages=600", "--classroom_train_size=300",
         "--classroom_test_size=100", "--vocab_size=512"]


def run_corpus(argv):
    saved = sys.argv
    sys.argv = ["corpus.py", *argv]
    try:
        corpus.main()
    finally:
        sys.argv = saved


def outputs(out_dir):
    folder = os.path.join(out_dir, "corpus")
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    selected = [p for path in sorted(glob.glob(os.path.join(folder, "selected-*.jsonl"))) for p in read_jsonl(path)]
    return summary, selected


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("classroom"))
    run_corpus([*SMALL, f"--out_dir={out_dir}"])
    summary, selected = outputs(out_dir)
    web = os.path.join(out_dir, "corpus", "web")
    pool = [p for path in sorted(glob.glob(os.path.join(web, "pool-*.jsonl"))) for p in read_jsonl(path)]
    seeds = list(read_jsonl(os.path.join(web, "seed.jsonl")))
    return {"out_dir": out_dir, "summary": summary, "selected": selected, "pool": pool, "seeds": seeds}


# ---------------------------------------------------------------- the classroom run

def test_recall_rises_and_final_precision_recall(classroom):
    rows = classroom["summary"]["iterations"]
    recall = [row["recall"] for row in rows]
    assert len(rows) >= 2 and recall[-1] >= recall[0] + 0.2
    assert max(recall[1:]) > recall[0]
    assert rows[-1]["precision"] >= 0.9 and rows[-1]["recall"] >= 0.9
    with open(os.path.join(classroom["out_dir"], "corpus", "metrics.jsonl")) as f:
        assert [json.loads(line) for line in f] == rows
    # the printed precision is that of the written corpus: check it from the labels
    labels = {p["url"]: p["is_math"] for p in classroom["pool"]}
    assert sum(labels[p["url"]] for p in classroom["selected"]) / len(classroom["selected"]) >= 0.9


def test_discovery_finds_math_domains_the_seed_did_not_cover(classroom):
    found = set(classroom["summary"]["math"]["domains"])
    seed_domains = {p["url"].split("/")[2] for p in classroom["seeds"]}
    unseeded = {p["url"].split("/")[2] for p in classroom["pool"] if p["style"] in ("forum", "rules")}
    assert seed_domains <= {p["url"].split("/")[2] for p in classroom["pool"]}
    assert len(found & unseeded - seed_domains) >= 5  # Q&A, lesson, board and school sites
    assert any("askmath" in d for d in found) and any("lessons" in d for d in found)
    assert not any(kind in d for d in found for kind in ("shop", "recipes", "travel", "town"))
    assert classroom["summary"]["iterations"][0]["new_seeds"] > 0


def test_every_planted_contaminated_page_is_removed_and_no_clean_one(classroom):
    pool, selected = classroom["pool"], classroom["selected"]
    planted = {p["url"] for p in pool if p["contaminated"]}
    assert len(planted) == 12
    assert not planted & {p["url"] for p in selected}
    assert classroom["summary"]["decontaminated"] == {"classroom": 12}
    # independently of the classifier: over the whole pool the index flags exactly the planted pages
    cfg = config.load_config(SMALL)
    index = corpus.Benchmarks(corpus.benchmark_texts({"classroom": tasks.load_problems("classroom", "test", cfg)}), 10, 3)
    assert {p["url"] for p in pool if index.match(p["text"])} == planted
    assert classroom["summary"]["collected"] - classroom["summary"]["selected"] == 12


def test_duplicates_are_removed(classroom):
    pool, summary = classroom["pool"], classroom["summary"]
    repeats = sum(n - 1 for n in Counter(p["url"] for p in pool).values())
    mirrors = sum(p["url"].startswith("https://mirror.") for p in pool)
    assert summary["url_duplicates"] == repeats > 0
    assert mirrors <= summary["near_duplicates"] <= 1.1 * mirrors  # a few template look-alikes too
    assert summary["pages_after_dedup"] == len(pool) - repeats - summary["near_duplicates"]
    assert len({p["url"] for p in classroom["selected"]}) == len(classroom["selected"])


def test_token_shards_hold_the_selected_pages(classroom):
    tok = Tokenizer.load(os.path.join(classroom["out_dir"], "tokenizer.tiktoken"))
    docs = []
    for path in sorted(glob.glob(os.path.join(classroom["out_dir"], "corpus", "tokens", "*.bin"))):
        tokens = np.asarray(shards.read_shard(path))
        assert tokens.dtype == np.uint16 and tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
        ends = np.flatnonzero(tokens == tok.eos_id)
        for doc in np.split(tokens, ends + 1)[:-1]:  # each opens with BOS and ends in EOS
            assert doc[0] == tok.bos_id and (doc[1:-1] != tok.bos_id).all()
            docs.append(tok.decode(doc[1:-1]))
    assert sorted(docs) == sorted(p["text"] for p in classroom["selected"])
    tokens = classroom["summary"]["tokens"]
    assert 0 < tokens["val"] < 0.1 * tokens["train"]


# ---------------------------------------------------------------- real page formats

def wet_record(url, text):
    content = text.encode()
    return (f"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(content)}\r\n\r\n").encode() + content + b"\r\n\r\n"


def write_wet(path, pages, junk=b""):
    info = b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Length: 9\r\n\r\nisPartOf:\r\n\r\n"
    body = info + b"".join(wet_record(p["url"], p["text"]) for p in pages) + junk
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(body)


@pytest.mark.parametrize("name", ["part.warc.wet", "part.warc.wet.gz"])
def test_wet_reader(tmp_path, name):
    pages = [{"url": "https://a.org/x", "text": "2 + 2 = 4\nand ünïcode"}, {"url": "https://b.org/y", "text": ""}]
    no_length = b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://c.org/\r\n\r\nlost\r\n\r\n"
    cut = b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://d.org/\r\nContent-Length: 999\r\n\r\nshort"
    path = str(tmp_path / name)
    write_wet(path, pages, no_length + wet_record("https://e.org/z", "after the bad one") + cut)
    malformed = {}
    read = list(corpus.read_pages(path, malformed))
    assert [(p["url"], p["text"]) for p in read] == [(p["url"], p["text"]) for p in pages] + [("https://e.org/z", "after the bad one")]
    assert malformed == {path: 2}  # one record without Content-Length (its content skipped with it), one cut short


def test_wet_jsonl_and_parquet_files_run_the_same_pipeline(classroom, tmp_path):
    import datasets

    pool, labels = classroom["pool"], {p["url"]: p["is_math"] for p in classroom["pool"]}
    bare = [{"url": p["url"], "text": p["text"]} for p in pool]
    third = len(bare) // 3
    write_wet(str(tmp_path / "crawl.warc.wet.gz"), bare[:third], junk=b"garbage line\r\n")
    write_jsonl(str(tmp_path / "pages.jsonl"), bare[third:2 * third] + [{"url": "https://x.org/no-text"}])
    with open(tmp_path / "pages.jsonl", "a") as f:
        f.write("{not json\n")
    datasets.Dataset.from_list(bare[2 * third:]).to_parquet(str(tmp_path / "pages.parquet"))
    write_jsonl(str(tmp_path / "seed.jsonl"), [{"text": p["text"]} for p in classroom["seeds"]])
    out_dir = str(tmp_path / "out")
    run_corpus([*SMALL, f"--out_dir={out_dir}", f"--corpus_seed_files=['{tmp_path}/seed.jsonl']",
                f"--corpus_pool_files=['{tmp_path}/crawl.warc.wet.gz', '{tmp_path}/pages.*']",
                "--corpus_train_tokenizer=false",
                f"--tokenizer_path={classroom['out_dir']}/tokenizer.tiktoken"])
    summary, selected = outputs(out_dir)
    assert summary["pool_files"] == 3 and summary["pool_pages"] == len(pool)
    assert sorted(summary["malformed"].values()) == [1, 2]  # WET junk; JSONL: no text, bad JSON
    assert "precision" not in summary["iterations"][0]  # real files carry no labels
    math = sum(labels.values()) - 12
    assert sum(labels[p["url"]] for p in selected) >= 0.9 * max(len(selected), math)
    assert summary["decontaminated"] == {"classroom": 12}


def test_a_negative_length_loses_one_record_not_the_rest_of_the_file(tmp_path):
    bad = b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://b.org/\r\nContent-Length: -1\r\n\r\nb\r\n\r\n"
    path = str(tmp_path / "neg.warc.wet")
    write_wet(path, [], wet_record("https://a.org/", "a") + bad + wet_record("https://c.org/", "c"))
    malformed = {}
    assert [p["url"] for p in corpus.read_pages(path, malformed)] == ["https://a.org/", "https://c.org/"]
    assert malformed == {path: 1}


def test_files_that_hold_no_usable_pages_are_named(tmp_path):
    """A cut-off download, a WARC file where a WET one belongs, a damaged Parquet file: one line
    each, naming the file; a JSONL file whose name holds ".warc.wet" is read as JSONL."""
    cut = str(tmp_path / "cut.warc.wet.gz")
    write_wet(cut, [{"url": "https://a.org/", "text": "a" * 5000}])
    data = open(cut, "rb").read()
    open(cut, "wb").write(data[:len(data) // 2])
    with pytest.raises(BadInput, match="cut.warc.wet.gz: truncated or corrupt"):
        list(corpus.read_pages(cut, {}))
    warc = str(tmp_path / "CC-MAIN-1.warc.gz")
    response = b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: https://a.org/\r\nContent-Length: 2\r\n\r\nhi\r\n\r\n"
    write_wet(warc, [], response * 2)
    with pytest.raises(BadInput, match="a WARC or WAT file, not WET"):
        list(corpus.read_pages(warc, {}))
    broken = tmp_path / "pages.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(BadInput, match="pages.parquet: truncated or corrupt"):
        list(corpus.read_pages(str(broken), {}))
    named_wet = str(tmp_path / "CC-MAIN-2.warc.wet.jsonl")
    write_jsonl(named_wet, [{"url": "https://a.org/", "text": "t"}])
    assert [p["url"] for p in corpus.read_pages(named_wet, {})] == ["https://a.org/"]


def test_a_url_urlsplit_refuses_is_a_malformed_page_and_a_bare_one_has_its_host(tmp_path):
    pool = str(tmp_path / "pool.jsonl")
    write_jsonl(pool, [{"url": "http://[2001:db8::1/x", "text": "t"}, {"url": "https://a.org/q/1", "text": "u"}])
    malformed = {}
    pages = corpus.load_pool([pool], corpus.distributed.setup("cpu"), malformed)
    assert [p["url"] for p in pages] == ["https://a.org/q/1"] and malformed == {pool: 1}
    assert corpus.domain_and_prefix("www.example.com/questions/1", 1) == ("www.example.com", "questions")
    assert corpus.url_hash("www.example.com/a/") == corpus.url_hash("https://www.example.com/a")


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(BadInput, match="no such page file"):
        list(corpus.read_pages(str(tmp_path / "nope.jsonl"), {}))
    with pytest.raises(BadInput, match="matches no file"):
        corpus.expand([str(tmp_path / "*.wet.gz")], "corpus_pool_files")
    with pytest.raises(BadInput, match="unknown page file type"):
        (tmp_path / "pages.csv").write_text("url,text\n")
        list(corpus.read_pages(str(tmp_path / "pages.csv"), {}))
    with pytest.raises(BadInput, match="corpus_url_patterns"):
        corpus.read_url_patterns(str(tmp_path / "patterns.txt"))
    with pytest.raises(BadInput, match="corpus_seed_files is empty"):
        write_jsonl(str(tmp_path / "p.jsonl"), [{"url": "u", "text": "t"}])
        run_corpus([f"--out_dir={tmp_path}", f"--corpus_pool_files=['{tmp_path}/p.jsonl']"])
    with pytest.raises(BadInput, match="corpus_pool_files is empty"):
        run_corpus([f"--out_dir={tmp_path}", f"--corpus_seed_files=['{tmp_path}/p.jsonl']"])
    write_jsonl(str(tmp_path / "s.jsonl"), [{"content": "seed text"}])  # not 'text'
    with pytest.raises(BadInput, match="no usable seed pages"):
        run_corpus([f"--out_dir={tmp_path}", f"--corpus_pool_files=['{tmp_path}/p.jsonl']",
                    f"--corpus_seed_files=['{tmp_path}/s.jsonl']"])
    mine = str(tmp_path / "tokenizer.json")  # the user's tokenizer: a trained BPE must not replace it
    with pytest.raises(BadInput, match="corpus_train_tokenizer=true writes a new BPE"):
        run_corpus([f"--out_dir={tmp_path}", f"--tokenizer_path={mine}"])
    with pytest.raises(BadInput, match="there is no tokenizer at"):
        run_corpus([f"--out_dir={tmp_path}", "--corpus_train_tokenizer=false"])


# ---------------------------------------------------------------- torchrun

def test_two_ranks_select_what_one_process_selects(classroom, tmp_path):
    out_dir = str(tmp_path / "ranks")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "corpus.py",
                          *SMALL, f"--out_dir={out_dir}", "--corpus_train_tokenizer=false",
                          f"--tokenizer_path={classroom['out_dir']}/tokenizer.tiktoken"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary, selected = outputs(out_dir)
    drop = ("seconds", "tokenizer")
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in summary["iterations"]] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in classroom["summary"]["iterations"]]
    assert {k: v for k, v in summary.items() if k not in drop + ("iterations",)} == \
        {k: v for k, v in classroom["summary"].items() if k not in drop + ("iterations",)}
    assert sorted(p["url"] for p in selected) == sorted(p["url"] for p in classroom["selected"])


# ---------------------------------------------------------------- the parts

def shingles(text, n=5):
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    base = list(rng.choice(vocab, 300))
    for changed in (5, 30, 90, 200):
        other = list(base)
        for i in rng.choice(300, changed, replace=False):
            other[i] = f"new{i}"
        a, b = " ".join(base), " ".join(other)
        true = len(shingles(a) & shingles(b)) / len(shingles(a) | shingles(b))
        sa, sb = (corpus.minhash_signature(t, 256, 5, seed=1) for t in (a, b))
        assert abs((sa == sb).mean() - true) < 0.08


def test_near_duplicates_keep_the_first_of_each_cluster():
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice([f"w{i}" for i in range(1000)], 200)) for _ in range(3)]
    near = texts[0].rsplit(" ", 2)[0] + " a changed ending"  # Jaccard ~0.97 with texts[0]
    half = " ".join(texts[1].split()[:100] + texts[2].split()[:100])  # ~1/3 with texts[1] and [2]
    docs = [texts[0], texts[1], near, half, texts[2], texts[1]]
    signatures = np.stack([corpus.minhash_signature(t, 128, 5, seed=0) for t in docs])
    assert corpus.near_duplicates(signatures, 16, 0.8).tolist() == [False, False, True, False, False, True]


def test_benchmark_index():
    named = [("gsm8k", "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."),
             ("math", "What is the sum of 2 and 3?"),  # 7 words: matched whole
             ("math", "x = 5")]  # under 3 words: ignored
    index = corpus.Benchmarks(named, 10, 3)
    assert index.match("Quiz: natalia SOLD clips to 48 of her friends, in April and then... more") == "gsm8k"
    assert index.match("Natalia sold clips to 48 of her friends in March") is None  # 9 words in a row only
    assert index.match("Q: what is the sum of 2 and 3? A: 5") == "math"
    assert index.match("what is the sum of 2 and 4") is None
    assert index.match("solve x = 5 for x") is None
    # GSM8K's answer field as the dataset has it, annotations and all, is indexed too
    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
    problem = tasks.gsm8k_problem("g", "How many clips?", raw)
    index = corpus.Benchmarks(corpus.benchmark_texts({"gsm8k": [problem]}), 10, 3)
    assert index.match("copied: " + raw.split("\n")[0] + " " + raw.split("\n")[1]) == "gsm8k"


def test_domain_discovery_rule():
    """A domain is math when > 10% of it is collected; in it, a prefix with > 10% of its own pages
    collected gives its uncollected pages as seeds (one stray page does not make a prefix)."""
    cfg = config.load_config([])
    d = corpus.distributed.setup("cpu")
    pages = ([("m.org", "questions", i < 3) for i in range(10)] + [("m.org", "blog", i < 1) for i in range(20)] +
             [("shop.com", "product", i < 1) for i in range(20)])
    domains, prefixes, collected = (list(x) for x in zip(*pages))
    new_seeds, math_domains, math_prefixes = corpus.discover(domains, prefixes, np.array(collected), cfg, d)
    assert math_domains == ["m.org"] and math_prefixes == ["m.org/questions"]
    assert new_seeds.tolist() == [i >= 3 for i in range(10)] + [False] * 40
    assert corpus.matches_patterns("https://mathoverflow.net/questions/1/x", ["mathoverflow.net/questions/*"])
    assert not corpus.matches_patterns("https://mathoverflow.net/users/1", ["mathoverflow.net/questions/*"])


def test_uniform_draws_are_uniform_and_stable():
    hashes = np.array([corpus.url_hash(f"https://site{i}.org/page") for i in range(20000)], np.uint64)
    draws = corpus.uniform(hashes, 5)
    assert abs(draws.mean() - 0.5) < 0.01 and abs((draws < 0.1).mean() - 0.1) < 0.01
    assert np.array_equal(draws, corpus.uniform(hashes, 5)) and not np.array_equal(draws, corpus.uniform(hashes, 6))
    assert corpus.url_hash("HTTPS://Site.org/a/#top") == corpus.url_hash("https://site.org/a")
