"""Benchmark: pages per second of corpus.py's three per-page stages on a 100K-page classroom web.

    dedup            MinHash signature of every page, then LSH banding over all of them
    scoring          fastText input line of every page, then P(math) from a trained classifier
    decontamination  every page checked against the hashed n-grams of the classroom test split

One process, the config's settings (the classroom defaults unless overridden); the classifier is
trained once (seed pages vs a pool sample) before scoring is timed. Each stage runs per page and
splits by shard, so a torchrun job of W ranks multiplies these figures by about W.

    python bench/bench_corpus.py [configs/NAME.py] [--web_pool_pages=100000] [--key=value ...]
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import corpus  # noqa: E402
from support import classroom_web, config, tasks  # noqa: E402


def timed(name, n_pages, work):
    started = time.time()
    result = work()
    seconds = time.time() - started
    print(f"{name:16s} {n_pages:8,d} pages {seconds:7.1f} s {n_pages / seconds:10,.0f} pages/s", flush=True)
    return result


def main():
    argv = sys.argv[1:]
    if not any(arg.startswith("--web_pool_pages=") for arg in argv):
        argv.append("--web_pool_pages=100000")
    cfg = config.main_config(argv)
    test = tasks.load_problems("classroom", "test", cfg)
    started = time.time()
    seeds, pool = classroom_web.generate_web(cfg.seed, cfg.web_pool_pages, cfg.web_seed_pages,
                                             [(p.question, p.solution) for p in test], cfg.web_contaminated_pages)
    print(f"generated {len(pool):,} pool pages and {len(seeds):,} seed pages in {time.time() - started:.1f} s")
    texts = [page["text"] for page in pool]

    def dedup():
        signatures = np.stack([corpus.minhash_signature(t, cfg.corpus_minhash_perms, cfg.corpus_shingle_words, cfg.seed)
                               for t in texts])
        return corpus.near_duplicates(signatures, cfg.corpus_lsh_bands, cfg.corpus_dup_jaccard)

    duplicates = timed("dedup", len(texts), dedup)

    import fasttext

    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "fasttext.bin")
        negatives = texts[::max(1, len(texts) // len(seeds))][:len(seeds)]
        corpus.train_classifier([corpus.fasttext_text(p["text"]) for p in seeds],
                                [corpus.fasttext_text(t) for t in negatives], cfg, model_path)
        model = fasttext.load_model(model_path)
        scores = timed("scoring", len(texts), lambda: corpus.math_scores(model, [corpus.fasttext_text(t) for t in texts]))

    index = corpus.Benchmarks(corpus.benchmark_texts({"classroom": test}), cfg.corpus_decontam_ngram,
                              cfg.corpus_decontam_min_ngram)
    quoted = timed("decontamination", len(texts), lambda: [index.match(t) for t in texts])
    print(f"({int(duplicates.sum()):,} near duplicates, {int((scores >= cfg.corpus_min_score).sum()):,} pages "
          f"scored math by the first classifier, {sum(q is not None for q in quoted)} quoting a test problem)")


if __name__ == "__main__":
    main()
