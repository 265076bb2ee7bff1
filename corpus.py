"""Build the math pretraining corpus: DeepSeekMath section 2.1, on a page pool you point it at.

    python corpus.py configs/classroom.py                        # the generated classroom web
    python corpus.py configs/7b.py --corpus_pool_files="['cc/*.warc.wet.gz']"
    torchrun --nproc_per_node=8 corpus.py configs/7b.py          # each rank takes its pool shards

The paper's pipeline, in the order this file runs it:
1. Inputs. Seed math pages (their OpenWebMath: JSONL/Parquet with `text`, or `hf:NAME` from the
   hub) and a page pool (their Common Crawl: WET files read directly, or page JSONL/Parquet).
   Malformed records are counted and reported, never fatal.
2. Deduplication: URL dedup, then near-duplicate removal with MinHash + LSH banding.
3. The iterative loop. A fastText classifier is trained on the seed (positive) against pages
   sampled from the pool (negative) and scores the whole pool; the pages scoring over a
   threshold are "collected". Domains (hostnames) with over 10% of their pages collected are
   math-related; their uncollected pages under a URL path prefix of which over the same share
   was collected join the seed (the paper had people annotate those URLs; a file of URL patterns
   a person writes is our hook for that). Retrain, rescore; stop after N iterations or when an
   iteration adds few new pages (in the paper ~98% of the 4th iteration's data had already been
   collected by the 3rd).
4. Decontamination: drop every page holding a 10-gram of a benchmark question or answer, or the
   whole text of a benchmark question/answer of 3 to 9 words.
5. Output in {out_dir}/corpus/: selected-NNNNN.jsonl (the corpus, one file per pool shard),
   tokens/{train,val}-NNNNN.bin (token shards, documents ended by EOS, see support/shards.py),
   metrics.jsonl (one line per iteration), summary.json; with corpus_train_tokenizer the BPE
   tokenizer is trained on the selected text (plus corpus_tokenizer_extra) and saved to
   {out_dir}/tokenizer.tiktoken, where the later stages load it. The outputs are written into a
   temporary folder that replaces corpus/ whole only when the run succeeds: a failed or
   interrupted run leaves the previous corpus, its tokenizer and its summary.json as they were.

Scale: pool files are shards; rank r of a torchrun job reads files r, r + W, ... and does the
per-page work (parsing, MinHash, scoring, decontamination, tokenizing) on them. What must be
global is small and exchanged with all_gather: URL hashes and MinHash signatures for dedup,
per-domain counts for discovery, the classifier's training lines (rank 0 trains; the model file
in the output folder is read by every rank, so multi-node runs need a shared file system).
Results do not depend on the number of ranks: pages are ordered by (shard, position) and every
random draw is a hash of the page's URL.
"""

import contextlib
import ctypes
import fnmatch
import glob
import gzip
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from functools import lru_cache
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from model import staged_folder
from support import tokenizer as bpe
from support import classroom_web, config, distributed, shards, tasks, training
from support.fileio import BadInput, read_jsonl, read_records, recover_staged_folder, write_json, write_jsonl

MATH, OTHER = "__label__math", "__label__other"


# ---------------------------------------------------------------- reading pages

def read_wet(path, malformed):
    """Yield {url, text} for every 'conversion' record of a Common Crawl WET file (.gz or not).

    A WARC record is a version line ("WARC/1.0"), header lines "Name: value", an empty line, then
    exactly Content-Length bytes of content. A record without WARC-Target-URI or Content-Length,
    with a bad length, or cut short is counted in malformed[path]; reading resumes at the next
    version line.
    """
    # Common Crawl's .gz files are one gzip member per record, concatenated: gzip.open reads across them
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:  # bytes: Content-Length counts bytes, not characters
        line = f.readline()
        records = conversions = 0
        counted = False  # the record being skipped was counted already
        while line:
            if not line.startswith(b"WARC/"):
                if not counted:
                    malformed[path] = malformed.get(path, 0) + 1
                while line and not line.startswith(b"WARC/"):  # resynchronise
                    line = f.readline()
                continue
            records, counted = records + 1, False
            headers = {}
            line = f.readline()
            while line and line.strip():
                name, _, value = line.decode("utf-8", "replace").partition(":")  # URLs hold ":" too
                headers[name.strip().lower()] = value.strip()
                line = f.readline()
            try:
                length = int(headers["content-length"])
                if length < 0:  # f.read(-1) would swallow the rest of the file
                    raise ValueError("negative length")
                content = f.read(length)
                if len(content) < length:
                    raise ValueError("record cut short")
            except (KeyError, ValueError):
                malformed[path] = malformed.get(path, 0) + 1
                counted = True
                line = f.readline()
                continue
            if headers.get("warc-type") == "conversion":  # the text of one page; "warcinfo" describes the file
                conversions += 1
                if "warc-target-uri" in headers:
                    yield {"url": headers["warc-target-uri"], "text": content.decode("utf-8", "replace")}
                else:
                    malformed[path] = malformed.get(path, 0) + 1
            line = f.readline()
            while line and not line.strip():  # the blank lines that end a record
                line = f.readline()
    if records > 1 and not conversions:
        raise BadInput(f"{path}: WARC records but no 'conversion' ones: a WARC or WAT file, not WET; "
                       "use Common Crawl's .warc.wet.gz files (the pages' extracted text)")


def read_pages(path, malformed, need_url=True):
    """Yield the pages ({url, text, ...labels}) of a WET, JSONL or Parquet file."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such page file; check corpus_pool_files / corpus_seed_files")
    is_records = path.endswith((".jsonl", ".parquet"))  # before the WET test: "CC-MAIN-x.warc.wet.jsonl"
    if not is_records and ".wet" not in os.path.basename(path) and ".warc" not in os.path.basename(path):
        raise BadInput(f"{path}: unknown page file type; use WET (.warc.wet[.gz]), .jsonl or .parquet")
    try:
        if not is_records:  # CC names: *.warc.wet.gz
            yield from read_wet(path, malformed)
            return
        for record in read_records(path, malformed):
            if not isinstance(record.get("text"), str) or (need_url and not isinstance(record.get("url"), str)):
                malformed[path] = malformed.get(path, 0) + 1
                continue
            yield record
    except BadInput:
        raise
    except (EOFError, OSError, zlib.error, ValueError) as e:  # a cut-off .gz, a damaged Parquet file
        raise BadInput(f"{path}: truncated or corrupt ({type(e).__name__}: {e}); download it again, "
                       "or leave it out of corpus_pool_files / corpus_seed_files") from None


def expand(patterns, what):
    """The files named by a list of paths and glob patterns, sorted, each once."""
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise BadInput(f"{what}: the pattern {pattern!r} matches no file")
        paths += [p for p in found if p not in paths]  # read twice, a file's pages would all be URL repeats
    return paths


def read_seed(sources, max_pages, malformed):
    """Texts of the seed math pages: files (JSONL / Parquet / WET) or "hf:NAME" hub datasets."""
    texts = []
    for source in sources:
        if source.startswith("hf:"):
            texts += hub_texts(source[3:], max_pages - len(texts) if max_pages else 0)  # only what is still wanted
        else:
            for path in expand([source], "corpus_seed_files"):
                # seeds are only fastText positives: their text is all we need, no URL
                pages = read_pages(path, malformed, need_url=False)
                wanted = max_pages - len(texts) if max_pages else None  # stop reading once enough
                texts += [page["text"] for page in itertools.islice(pages, wanted)]
        if max_pages and len(texts) >= max_pages:
            return texts[:max_pages]
    return texts


def hub_texts(name, limit):
    """The `text` column of a hub dataset's train split, streamed (e.g. open-web-math/open-web-math)."""
    import datasets  # slow to import; only the hub path needs it

    try:
        rows = datasets.load_dataset(name, split="train", streaming=True)
        return [row["text"] for row in itertools.islice(rows, limit or None)]
    except Exception as e:  # offline, unknown name: one message either way
        raise BadInput(f"cannot stream hf:{name} from the Hugging Face hub ({type(e).__name__}: {e}); "
                       "offline, download its rows to a .jsonl/.parquet file and list that in corpus_seed_files")


# ---------------------------------------------------------------- hashing text

# Words for dedup and decontamination: runs of Unicode letters, digits and "_"; LaTeX's \frac is "frac"
WORD = re.compile(r"\w+")


@lru_cache(maxsize=2**20)  # web text repeats its words: each distinct word is hashed once
def word_hash(word):
    """A stable 64-bit hash of a word (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def word_hashes(text):
    """(L,) uint64: one hash per lowercased word of text; punctuation is ignored."""
    return np.array([word_hash(w) for w in WORD.findall(text.lower())], dtype=np.uint64)


def ngram_hashes(hashes, n):
    """(L - n + 1,) uint64: a hash of every run of n consecutive words,
    h = sum_j hashes[i + j] * P^(n - 1 - j) mod 2^64 (polynomial rolling hash; numpy wraps)."""
    if len(hashes) < n:
        return np.zeros(0, np.uint64)
    out = np.zeros(len(hashes) - n + 1, np.uint64)  # (L - n + 1,)
    # Horner's rule for every start position at once: n vectorised steps, no Python loop over positions;
    # P is the 64-bit FNV prime, odd, so multiplying by it mod 2^64 loses no information
    for j in range(n):
        out = out * np.uint64(0x100000001B3) + hashes[j:len(hashes) - n + 1 + j]
    return out


def url_hash(url):
    """64-bit hash of a URL normalised for dedup: lowercase host, no scheme, fragment or trailing /."""
    parts = split_url(url.strip())
    key = f"{parts.netloc.lower()}{parts.path.rstrip('/')}?{parts.query}"  # http:// and https:// copies match
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def uniform(hashes, salt):
    """A uniform draw in [0, 1) per page, a pure function of (page hash, salt): splitmix64.

    No random generator state: a page's draw is the same on any rank, in any order, in any run,
    which is what keeps the corpus independent of the number of ranks."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps mod 2^64, by design
        z = np.asarray(hashes, np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53  # the top 53 bits: exact in a float64


# ---------------------------------------------------------------- near-duplicates: MinHash + LSH

def minhash_signature(text, n_perm, shingle_words, seed):
    """(n_perm,) uint32 MinHash signature of the page's set of `shingle_words`-word shingles.

    For a random hash function h, P[min h(A) == min h(B)] = |A & B| / |A | B| (the Jaccard
    similarity of the shingle sets), so the fraction of equal entries of two signatures estimates
    it. The n_perm hash functions are h_k(s) = high 32 bits of (a_k * s + b_k) mod 2^64, a_k odd.
    """
    a, b = permutation_params(n_perm, seed)
    hashes = word_hashes(text)
    # the SET of shingles (unique); a page shorter than a shingle is one shingle of all its words
    shingles = np.unique(ngram_hashes(hashes, min(shingle_words, max(len(hashes), 1))))
    if len(shingles) == 0:  # a page without words: its signature matches only other empty pages
        return np.zeros(n_perm, np.uint32)
    with np.errstate(over="ignore"):
        permuted = (a[:, None] * shingles[None, :] + b[:, None]) >> np.uint64(32)  # (n_perm, n_shingles)
    return permuted.min(axis=1).astype(np.uint32)  # (n_perm,) each hash function's minimum over the set


@lru_cache(maxsize=4)
def permutation_params(n_perm, seed):
    """(a, b), (n_perm,) uint64 each: the hash functions of every signature. Drawn from cfg.seed
    alone, so every rank and every page uses the same ones (else signatures would not compare)."""
    rng = np.random.default_rng(seed)
    # odd a: x -> a x mod 2^64 is then a bijection, so distinct shingles stay distinct before the >> 32
    a = rng.integers(1, 2**63, n_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, n_perm, dtype=np.uint64)
    return a, b


def near_duplicates(signatures, bands, threshold):
    """(N,) bool: True for a page that is a near-duplicate of an earlier page (row order).

    LSH banding: cut each signature into `bands` bands of r = n_perm / bands rows. Two pages
    with Jaccard similarity s share at least one identical band with probability
    1 - (1 - s^r)^bands, an S-curve that is steep around (1 / bands)^(1 / r); only pages that
    share a band are compared. Within a band's bucket every page is compared with the bucket's
    first page, and dropped when their signatures agree on >= threshold of the entries.
    """
    n, n_perm = signatures.shape
    rows = n_perm // bands  # r; the defaults 128 / 16 = 8 make pages candidates from ~(1/16)^(1/8) = 0.71
    duplicate = np.zeros(n, bool)
    index = np.arange(n)
    for band in range(bands):
        cols = signatures[:, band * rows:(band + 1) * rows].astype(np.uint64)  # (n, r) this band of every page
        keys = np.zeros(n, np.uint64)  # (n,) one hash of the band's r entries: equal bands, equal keys
        with np.errstate(over="ignore"):
            for col in cols.T:
                keys = keys * np.uint64(0x100000001B3) + col
        order = np.lexsort((index, keys))  # by bucket, then page order
        starts = np.r_[True, keys[order][1:] != keys[order][:-1]]  # first page of each bucket
        first = order[np.maximum.accumulate(np.where(starts, index, 0))]  # its bucket's first page
        members, heads = order[~starts], first[~starts]
        similarity = (signatures[members] == signatures[heads]).mean(axis=1)  # (m,) estimated Jaccard
        duplicate[members[similarity >= threshold]] = True
    return duplicate


def deduplicate(pages, cfg, d):
    """(url_dup, near_dup): masks over this rank's pages of the URL repeats and near duplicates
    found among all ranks' pages; of each group the first page in (shard, position) order stays.

    The paper dedups Common Crawl by URL and near-duplicate content before any collection (40B
    HTML pages remain) without naming its near-dedup method; MinHash + LSH is our choice, the
    usual one for web corpora. Dedup is global, so every rank gathers every page's signature
    (n_perm x 4 bytes a page)."""
    signatures = np.stack([minhash_signature(p["text"], cfg.corpus_minhash_perms, cfg.corpus_shingle_words, cfg.seed)
                           for p in tqdm(pages, desc="minhash", disable=not d.is_main, unit=" pages")]
                          ) if pages else np.zeros((0, cfg.corpus_minhash_perms), np.uint32)
    order_keys = np.array([p["order"] for p in pages], np.int64)
    urls = np.array([p["url_hash"] for p in pages], np.uint64)
    parts = distributed.all_gather((order_keys, urls, signatures), d)
    all_keys, all_urls, all_sigs = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(all_keys, kind="stable")  # global page order: (shard, position)
    _, first = np.unique(all_urls[order], return_index=True)  # where each URL first occurs, in page order
    url_dup = np.ones(len(order), bool)
    url_dup[first] = False  # the first page of each URL stays
    near_dup = np.zeros(len(order), bool)
    kept = np.flatnonzero(~url_dup)  # near-dedup only what URL dedup kept
    near_dup[kept] = near_duplicates(all_sigs[order][kept], cfg.corpus_lsh_bands, cfg.corpus_dup_jaccard)
    mine = np.searchsorted(all_keys[order], order_keys)  # this rank's pages in the global order
    return url_dup[mine], near_dup[mine]


# ---------------------------------------------------------------- fastText classifier

def fasttext_text(text):
    """One line of fastText input: lowercase, punctuation split off words, no newlines.

    fastText splits on whitespace and reads one example per line: "x^2+1=5." must become
    "x ^ 2 + 1 = 5 ." for its word n-grams to see the math symbols."""
    return " ".join(re.sub(r"([^\w\s])", r" \1 ", text.lower()).split())


@contextlib.contextmanager
def zeroed_allocations():
    """Make new heap memory read as zeros while fastText trains.

    fastText initialises its input matrix (words + n-gram buckets, by dim) in 10 blocks, one per
    training thread, so with fewer than 10 threads most rows keep their initial memory. Upstream
    that memory is zeroed; the fasttext-numpy2 build leaves it as the allocator returns it, so
    rows can hold garbage such as 1e35 and training fails with "Encountered NaN". glibc's
    M_PERTURB option set to 255 fills every allocation with zero bytes (~255), which restores
    upstream's zeros and makes training deterministic. Without glibc this does nothing; use
    fasttext_threads >= 10 there.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this process runs on
    M_PERTURB = -6  # glibc's malloc.h
    if mallopt:
        mallopt(M_PERTURB, 255)
    try:
        yield
    finally:
        if mallopt:
            mallopt(M_PERTURB, 0)


def train_classifier(positives, negatives, cfg, model_path):
    """Train fastText (paper: dim 256, lr 0.1, word n-grams 3, min count 3, 3 epochs) on
    positives (math) vs negatives, from a file in its `__label__x text` format; save it."""
    import fasttext

    lines = [f"{MATH} {t}" for t in positives] + [f"{OTHER} {t}" for t in negatives]
    np.random.default_rng(cfg.seed).shuffle(lines)  # fastText reads its file in order
    with tempfile.TemporaryDirectory() as tmp, zeroed_allocations():
        train_file = os.path.join(tmp, "train.txt")
        with open(train_file, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        model = fasttext.train_supervised(
            input=train_file, dim=cfg.fasttext_dim, lr=cfg.fasttext_lr, wordNgrams=cfg.fasttext_word_ngrams,
            minCount=cfg.fasttext_min_count, epoch=cfg.fasttext_epoch, bucket=cfg.fasttext_bucket,
            thread=cfg.fasttext_threads, seed=cfg.seed, verbose=0)
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    model.save_model(model_path)


def math_scores(model, lines):
    """(N,) P(math | page) from the classifier, for fastText-ready lines."""
    if not lines:
        return np.zeros(0)
    labels, probs = model.predict(lines, k=2)  # both labels, best first, with their probabilities
    return np.array([p[list(l).index(MATH)] if MATH in l else 0.0 for l, p in zip(labels, probs)])


# ---------------------------------------------------------------- domain discovery

def split_url(url):
    """urlsplit, reading a URL without a scheme ("www.example.com/a") as a host and a path."""
    return urlsplit(url if "://" in url else "//" + url)


def domain_and_prefix(url, depth):
    """("mathoverflow.net", "questions") for https://mathoverflow.net/questions/123/slug, depth 1."""
    parts = split_url(url)
    segments = [s for s in parts.path.split("/") if s][:depth]
    return (parts.hostname or "").lower(), "/".join(segments)  # hostname drops the port and user


def read_url_patterns(path):
    """The URL patterns a person wrote (one glob per line over "host/path", # comments), or []."""
    if not path:
        return []
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such URL pattern file (corpus_url_patterns); write one glob per "
                       "line such as mathoverflow.net/questions/* or set corpus_url_patterns=''")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def matches_patterns(url, patterns):
    """Whether the URL without its scheme matches a glob of read_url_patterns."""
    bare = url.split("://", 1)[-1]
    return any(fnmatch.fnmatch(bare, p) for p in patterns)


def discover(domains, prefixes, collected, cfg, d):
    """Domain discovery (paper 2.1). A domain with over corpus_domain_share of its pages
    collected is math-related. In it, a URL path prefix with over that share of its own pages
    collected holds math (our stand-in for the paper's people annotating URLs such as
    mathoverflow.net/questions), and its uncollected pages become seeds.
    Returns (new seed mask over this rank's pages, sorted math domains, sorted "domain/prefix")."""
    counts = Counter(zip(domains, prefixes, collected))  # (domain, prefix, collected) -> pages
    merged = sum((Counter(part) for part in distributed.all_gather(counts, d)), Counter())  # over all ranks
    domain_pages, domain_hits, prefix_pages, prefix_hits = Counter(), Counter(), Counter(), Counter()
    for (domain, prefix, is_collected), n in merged.items():
        domain_pages[domain] += n
        domain_hits[domain] += n * is_collected
        prefix_pages[domain, prefix] += n
        prefix_hits[domain, prefix] += n * is_collected
    share = cfg.corpus_domain_share
    math_domains = {dom for dom in domain_pages if domain_hits[dom] > share * domain_pages[dom]}  # paper: > 10%
    math_prefixes = {key for key in prefix_pages
                     if key[0] in math_domains and prefix_hits[key] > share * prefix_pages[key]}
    # their pages the classifier missed become positives: the next classifier learns what this one did not
    new_seeds = np.array([not c and (dom, pre) in math_prefixes for dom, pre, c in zip(domains, prefixes, collected)], bool)
    return new_seeds, sorted(math_domains), sorted(f"{dom}/{pre}" for dom, pre in math_prefixes)


# ---------------------------------------------------------------- decontamination

class Benchmarks:
    """Hashed n-grams of benchmark texts, so each page is checked against all benchmarks at once.

    A page is contaminated (paper 2.1) when it holds any n-gram (n = corpus_decontam_ngram, 10)
    of a benchmark question or answer, or the whole word sequence of a benchmark text with
    corpus_decontam_min_ngram (3) to n - 1 words. Every text is hashed once into sorted arrays;
    a page costs one binary search (np.searchsorted) per n-gram length, whatever the number
    of benchmarks.
    """

    def __init__(self, named_texts, n, min_n):
        self.owner = {}  # n-gram hash -> the benchmark it came from
        by_length = defaultdict(list)
        for name, text in named_texts:
            hashes = word_hashes(text)
            if len(hashes) >= n:
                grams = ngram_hashes(hashes, n)
                by_length[n].append(grams)
            elif len(hashes) >= min_n:
                grams = ngram_hashes(hashes, len(hashes))  # one "n-gram": the whole short text
                by_length[len(hashes)].append(grams)
            else:
                continue
            for g in grams.tolist():
                self.owner.setdefault(g, name)  # a gram shared by two benchmarks is reported under the first
        # length -> sorted unique hashes: the page side is then one searchsorted per length
        self.grams = {length: np.unique(np.concatenate(parts)) for length, parts in by_length.items()}

    def match(self, text):
        """The name of a benchmark the page quotes, or None."""
        hashes = word_hashes(text)
        for length, grams in self.grams.items():
            page_grams = ngram_hashes(hashes, length)  # every window of the page of this many words
            # searchsorted gives an insertion point, not a match: compare the gram there
            found = grams[np.minimum(np.searchsorted(grams, page_grams), len(grams) - 1)] == page_grams
            if found.any():
                return self.owner[int(page_grams[found.argmax()])]
        return None


def benchmark_texts(benchmarks):
    """(benchmark name, text) for every question and answer of {name: [tasks.Problem]}. The
    answer is the worked solution when there is one (GSM8K's and MATH's answer fields are), and
    for GSM8K also the answer field as the dataset has it, with its <<48/2=24>> annotations and
    "#### 72", as a page copying the dataset would quote it."""
    return [(name, text) for name, problems in benchmarks.items() for problem in problems
            for text in (problem.question, problem.solution or problem.answer, problem.meta.get("answer_field"))
            if text]


def decontaminate(pages, benchmarks, cfg, d):
    """(the pages that quote no benchmark, {benchmark name: pages removed} over all ranks).

    Where we differ from the paper: it removes the text segments that match, we drop the whole
    page (simpler, and it errs toward removing); and words are compared lowercased, punctuation
    ignored, a little looser than the paper's exact substring match. Decontamination runs on the
    collected pages only: those are all the corpus holds."""
    index = Benchmarks(benchmark_texts(benchmarks), cfg.corpus_decontam_ngram, cfg.corpus_decontam_min_ngram)
    quoted = [index.match(p["text"]) for p in tqdm(pages, desc="decontaminating", disable=not d.is_main, unit=" pages")]
    removed = sum((Counter(part) for part in distributed.all_gather(Counter(q for q in quoted if q), d)), Counter())
    return [p for p, q in zip(pages, quoted) if not q], dict(removed)


def total(value, d):
    """The sum of a number over all ranks."""
    return sum(distributed.all_gather(value, d))


# ---------------------------------------------------------------- the pipeline

def inputs(cfg, folder, benchmarks, d):
    """(seed sources, pool files): the configured files, or the classroom web, which rank 0
    writes to {folder}/web/ with pages quoting the classroom benchmark's test problems."""
    if cfg.corpus_seed_files and not cfg.corpus_pool_files:
        raise BadInput("corpus_seed_files is set but corpus_pool_files is empty: name the pages to select from "
                       "(WET, .jsonl or .parquet), or leave both empty for the classroom web")
    if cfg.corpus_pool_files:
        if not cfg.corpus_seed_files:
            raise BadInput("corpus_seed_files is empty: name seed math pages (.jsonl/.parquet with 'text', or hf:NAME)")
        return cfg.corpus_seed_files, expand(cfg.corpus_pool_files, "corpus_pool_files")
    web = os.path.join(folder, "web")
    if d.is_main:
        quoted = [(p.question, p.solution or p.answer) for p in benchmarks.get("classroom", [])]
        # web_contaminated_pages of the pool quote test problems: something for decontamination to find
        classroom_web.write_web(web, cfg.seed, cfg.web_pool_pages, cfg.web_seed_pages, cfg.web_shards,
                                quoted, cfg.web_contaminated_pages)
    distributed.barrier(d)  # the other ranks read what rank 0 wrote
    return [os.path.join(web, "seed.jsonl")], [os.path.join(web, f"pool-{k:05d}.jsonl") for k in range(cfg.web_shards)]


def load_pool(pool_files, d, malformed):
    """This rank's pages: every W-th pool file from the rank-th, in order."""
    pages = []
    for shard in tqdm(range(d.rank, len(pool_files), d.world_size), desc="reading pool",
                      disable=not d.is_main, unit=" files"):
        for position, page in enumerate(read_pages(pool_files[shard], malformed)):
            page["shard"], page["order"] = shard, (shard << 32) + position  # (shard, position) as one int64
            try:
                page["url_hash"] = url_hash(page["url"])  # split_url, as domain_and_prefix later: fails here or never
            except ValueError:  # "http://[2001:db8::1/x": urlsplit refuses it
                malformed[pool_files[shard]] = malformed.get(pool_files[shard], 0) + 1
                continue
            pages.append(page)
    return pages


def iterate(pages, seed_texts, cfg, folder, d):
    """The iterative fastText loop. Returns (P(math) per page, metrics rows, math domains)."""
    import fasttext

    lines = [fasttext_text(p["text"]) for p in pages]  # normalised once, scored every iteration
    seed_lines = [fasttext_text(t) for t in seed_texts]
    hashes = np.array([p["url_hash"] for p in pages], np.uint64)
    domains = [domain_and_prefix(p["url"], cfg.corpus_url_prefix_depth)[0] for p in pages]
    prefixes = [domain_and_prefix(p["url"], cfg.corpus_url_prefix_depth)[1] for p in pages]
    patterns = read_url_patterns(cfg.corpus_url_patterns)
    positive = np.array([matches_patterns(p["url"], patterns) for p in pages], bool)  # (N,) pool seeds
    # (N,) the classroom web's ground truth: precision and recall only, never a selection
    is_math = np.array([bool(p.get("is_math")) for p in pages], bool)
    has_labels = all(distributed.all_gather(all("is_math" in p for p in pages), d))  # the classroom web's
    collected = np.zeros(len(pages), bool)
    known_domains, rows = set(), []
    model_path = os.path.join(folder, "fasttext.bin")
    for iteration in range(1, cfg.corpus_iterations + 1):
        started = time.time()
        # Negatives: a uniform sample of the pool pages that are not seeds, about
        # corpus_negative_ratio times as many as the positives (the paper: 500K vs 500K).
        n_positive = total(len(seed_texts) + int(positive.sum()), d)  # the seed is read on rank 0 only
        rate = cfg.corpus_negative_ratio * n_positive / max(total(int((~positive).sum()), d), 1)
        negative = ~positive & (uniform(hashes, 1000 * cfg.seed + iteration) < rate)  # (N,) a new draw each iteration
        parts = distributed.all_gather(([(p["order"], lines[i]) for i, p in enumerate(pages) if positive[i]],
                            [(p["order"], lines[i]) for i, p in enumerate(pages) if negative[i]]), d)
        if d.is_main:  # in page order, so the model does not depend on the number of ranks
            train_classifier(seed_lines + [line for _, line in sorted(x for pos, _ in parts for x in pos)],
                             [line for _, line in sorted(x for _, neg in parts for x in neg)], cfg, model_path)
        distributed.barrier(d)
        scores = math_scores(fasttext.load_model(model_path), lines)  # (N,) every rank scores its own pages
        # Where we differ: the paper ranks the pages by score and keeps the top ones up to a token
        # budget chosen by pretraining runs (40B tokens in the 1st iteration); we keep P(math) >= a
        # fixed threshold, which needs no such runs.
        previous, collected = collected, scores >= cfg.corpus_min_score
        new_seeds, math_domains, math_prefixes = discover(domains, prefixes, collected, cfg, d)
        new_seeds &= ~positive  # a page that is a seed already is not a new one
        positive |= new_seeds  # seeds accumulate over the iterations
        row = {"iteration": iteration, "positives": n_positive, "negatives": total(int(negative.sum()), d),
               "collected": total(int(collected.sum()), d), "new": total(int((collected & ~previous).sum()), d),
               "math_domains": len(math_domains), "new_math_domains": len(set(math_domains) - known_domains),
               "new_seeds": total(int(new_seeds.sum()), d)}
        if has_labels:
            true_positive = total(int((collected & is_math).sum()), d)
            row["precision"] = round(true_positive / max(row["collected"], 1), 4)
            row["recall"] = round(true_positive / max(total(int(is_math.sum()), d), 1), 4)
        row["seconds"] = round(time.time() - started, 2)
        known_domains |= set(math_domains)
        rows.append(row)
        if d.is_main:
            write_jsonl(os.path.join(folder, "metrics.jsonl"), rows)
        distributed.print0(f"iteration {iteration}: " + ", ".join(f"{k} {v}" for k, v in list(row.items())[1:]))
        # the paper stopped after its 4th iteration, ~98% of whose data the 3rd had collected
        if iteration > 1 and row["new"] < cfg.corpus_stop_new_share * row["collected"]:
            distributed.print0(f"stopping: {row['new']} new pages is under {cfg.corpus_stop_new_share:.0%} of those collected")
            break
    return scores, rows, {"domains": math_domains, "prefixes": math_prefixes}  # the last classifier's scores


def train_tokenizer(cfg, selected_files, path):
    """Train the BPE on the selected corpus plus, for the SFT formats, the problems named in
    corpus_tokenizer_extra (each question in the chat template and every solution format)."""
    def texts():
        for selected in selected_files:
            yield from (page["text"] for page in read_jsonl(selected))
        for source in cfg.corpus_tokenizer_extra:
            for problem in tasks.load_problems(source, "train", cfg):
                yield bpe.chat_prompt(problem.question)
                yield from (tasks.render_solution(problem, fmt) for fmt in (tasks.FORMATS if problem.program else ("cot",)))

    # Not in the paper: DeepSeekMath keeps DeepSeek-LLM's 100K tokenizer; a model trained from
    # scratch on the classroom gets a small BPE fitted to its own text.
    bpe.train_bpe(texts(), cfg.vocab_size).save(path)


def write_tokens(pages, tok, folder, shard, cfg):
    """Token shards of one pool shard's selected pages, train and val, each document as BOS, its
    tokens, EOS. Returns {split: tokens}."""
    # (N,) by URL hash: the split of a page does not depend on ranks, shards or reruns
    is_val = uniform(np.array([p["url_hash"] for p in pages], np.uint64), 7) < cfg.corpus_val_share
    counts = {}
    for split, in_split in (("train", ~is_val), ("val", is_val)):
        # BOS opens and EOS ends each document: pretraining windows cross document borders, and
        # these mark them. Every prompt later starts with BOS (few-shot and chat alike), so the
        # base model must have seen it: an embedding never trained would open every prompt.
        docs = [[tok.bos_id] + tok.encode(p["text"]) + [tok.eos_id] for p, keep in zip(pages, in_split) if keep]
        tokens = np.array([t for doc in docs for t in doc], shards.token_dtype(tok.n_vocab))  # 1-D, uint16/32
        shards.write_shard(os.path.join(folder, "tokens", f"{split}-{shard:05d}.bin"), tokens)
        counts[split] = len(tokens)
    return counts


@contextlib.contextmanager
def new_output(folder, d):
    """The temporary folder every rank writes this run's outputs into. When the run succeeds it
    replaces `folder` whole (model.staged_folder); when it fails it is removed and `folder`,
    with its summary.json, stays as the last successful run left it."""
    if not d.is_main:
        yield distributed.all_gather(None, d)[0]  # rank 0's build folder
        distributed.barrier(d)
        return
    recover_staged_folder(folder)
    with staged_folder(folder) as build:
        umask = os.umask(0)  # the only way to read the umask is to set it, then set it back
        os.umask(umask)
        os.chmod(build, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the mode makedirs would
        distributed.all_gather(build, d)
        yield build
        distributed.barrier(d)  # every rank has written its shards


def install_tokenizer(trained, path, folder):
    """Move the tokenizer trained in the build folder to `path` (and its sidecar). The previous
    summary.json goes first: killed in between, the old corpus never looks done with a new
    tokenizer."""
    if os.path.exists(os.path.join(folder, "summary.json")):
        os.remove(os.path.join(folder, "summary.json"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shutil.move(trained + ".json", path + ".json")
    shutil.move(trained, path)


def check_tokenizer_settings(cfg):
    """A trained BPE goes to {out_dir}/tokenizer.tiktoken, never over a tokenizer the user named;
    one that is not trained must exist before the hours of the fastText loop."""
    if cfg.corpus_train_tokenizer and cfg.tokenizer_path:
        raise BadInput(f"corpus_train_tokenizer=true writes a new BPE to {cfg.out_dir}/tokenizer.tiktoken, and "
                       f"tokenizer_path={cfg.tokenizer_path!r} names another: set corpus_train_tokenizer=false to "
                       "tokenize the corpus with it, or leave tokenizer_path empty")
    path = cfg.tokenizer_path or os.path.join(cfg.out_dir, "tokenizer.tiktoken")
    if not cfg.corpus_train_tokenizer and not os.path.exists(path):
        raise BadInput(f"corpus_train_tokenizer=false, and there is no tokenizer at {path}: set tokenizer_path "
                       "to a .tiktoken or tokenizer.json file, or corpus_train_tokenizer=true")


def main():
    cfg = config.main_config()
    check_tokenizer_settings(cfg)
    d = distributed.setup("cpu")
    started = time.time()
    # the test splits: the corpus must not hold what the later stages are evaluated on
    benchmarks = {os.path.basename(source): tasks.load_problems(source, "test", cfg) for source in cfg.corpus_benchmarks}
    with new_output(os.path.join(cfg.out_dir, "corpus"), d) as folder:
        summary = build(cfg, folder, benchmarks, d)
        tokenizer_path = cfg.tokenizer_path or os.path.join(cfg.out_dir, "tokenizer.tiktoken")  # see check_tokenizer_settings
        summary.update(tokenizer=tokenizer_path, seconds=round(time.time() - started, 1))
        if d.is_main:
            write_json(os.path.join(folder, "summary.json"), summary)
            if cfg.corpus_train_tokenizer:
                install_tokenizer(os.path.join(folder, "tokenizer.tiktoken"), tokenizer_path,
                                  os.path.join(cfg.out_dir, "corpus"))
    distributed.print0(f"corpus: {summary['selected']} pages, {summary['tokens'].get('train', 0):,} train and "
                       f"{summary['tokens'].get('val', 0):,} val tokens in {os.path.join(cfg.out_dir, 'corpus')} "
                       f"({summary['seconds']} s)")
    distributed.cleanup()


def build(cfg, folder, benchmarks, d):
    """Every output of the run, written into `folder`; returns the summary."""
    seed_sources, pool_files = inputs(cfg, folder, benchmarks, d)
    malformed = {}
    pages = load_pool(pool_files, d, malformed)
    # rank 0 alone trains fastText, so only it reads the seed
    seed_texts = read_seed(seed_sources, cfg.corpus_seed_max_pages, malformed) if d.is_main else []
    summary = {"pool_files": len(pool_files), "pool_pages": total(len(pages), d), "seed_pages": len(seed_texts)}
    if not summary["pool_pages"] or (d.is_main and not summary["seed_pages"]):
        empty = "pool" if not summary["pool_pages"] else "seed"
        raise BadInput(f"no usable {empty} pages (malformed records: {malformed}); the corpus needs page records "
                       "with 'text' (and 'url' in the pool), or WET conversion records")
    distributed.print0(f"read {summary['pool_pages']} pool pages from {len(pool_files)} files and "
                       f"{len(seed_texts)} seed pages; malformed records skipped: {total(sum(malformed.values()), d)}")

    url_dup, near_dup = deduplicate(pages, cfg, d)
    pages = [p for p, dup in zip(pages, url_dup | near_dup) if not dup]
    summary.update(url_duplicates=total(int(url_dup.sum()), d), near_duplicates=total(int(near_dup.sum()), d))
    distributed.print0(f"dedup: {summary['url_duplicates']} URL duplicates, {summary['near_duplicates']} near duplicates")

    scores, summary["iterations"], summary["math"] = iterate(pages, seed_texts, cfg, folder, d)
    collected = [dict(p, score=round(float(s), 4)) for p, s in zip(pages, scores) if s >= cfg.corpus_min_score]
    selected, summary["decontaminated"] = decontaminate(collected, benchmarks, cfg, d)
    distributed.print0(f"decontamination removed {sum(summary['decontaminated'].values())} pages: {summary['decontaminated']}")

    my_shards = range(d.rank, len(pool_files), d.world_size)
    selected_files = [os.path.join(folder, f"selected-{k:05d}.jsonl") for k in range(len(pool_files))]
    for shard in my_shards:
        write_jsonl(selected_files[shard], ({"url": p["url"], "text": p["text"], "score": p["score"]}
                                            for p in selected if p["shard"] == shard))
    distributed.barrier(d)
    # a new tokenizer is written beside the new corpus, and put in place with it (main)
    tokenizer_path = os.path.join(folder, "tokenizer.tiktoken") if cfg.corpus_train_tokenizer else \
        cfg.tokenizer_path or os.path.join(cfg.out_dir, "tokenizer.tiktoken")
    if cfg.corpus_train_tokenizer and d.is_main:
        train_tokenizer(cfg, selected_files, tokenizer_path)
    distributed.barrier(d)
    tok = bpe.Tokenizer.load(tokenizer_path)
    tokens = Counter()
    for shard in tqdm(my_shards, desc="tokenizing", disable=not d.is_main, unit=" shards"):
        tokens.update(write_tokens([p for p in selected if p["shard"] == shard], tok, folder, shard, cfg))

    summary.update(
        malformed={path: n for part in distributed.all_gather(malformed, d) for path, n in part.items()},
        pages_after_dedup=total(len(pages), d), collected=total(len(collected), d), selected=total(len(selected), d),
        tokens=dict(sum((Counter(part) for part in distributed.all_gather(tokens, d)), Counter())))
    return summary


if __name__ == "__main__":
    training.run_main("corpus.py", main)
