"""The tokenizer: byte-level BPE trained on our own text, served by tiktoken; the chat template.

DeepSeekMath's models use the DeepSeek LLM tokenizer (DeepSeek LLM paper, section 2.1): byte-level
BPE (so any text, in any script, is encoded without an unknown token), a pre-tokenizer that keeps
pieces of different kinds apart (letters, punctuation, newlines, CJK) and splits numbers into
single digits, and a 100K vocabulary plus special tokens (102,400 rows in the embedding). We do
the same at classroom size:

  * `train_bpe(texts, vocab_size)` learns merges on our text (fast: see `_learn_merges`);
  * the learned ranks are served by a `tiktoken.Encoding` (Rust BPE, fast encode/decode);
  * `Tokenizer.save(path)` writes tiktoken's `.tiktoken` ranks file (one "base64(token) rank"
    line per token) plus a JSON sidecar `path + ".json"` holding the pre-tokenizer (pat_str and
    split_patterns, see `Tokenizer`) and the special tokens {string: id};
  * `Tokenizer.load(path)` reads that, or a Hugging Face `tokenizer.json` (DeepSeekMath-7B's,
    Qwen2/2.5's, Llama 3's), giving ids identical to the `tokenizers` library's (see
    `_hf_tokenizer_parts` for exactly what is and is not supported), with the special tokens, EOS
    ids and chat template of the tokenizer_config.json beside it;
  * `encode_prompt` / `encode_response`: the prompt of a question and the response after it.
    Without a chat template (ours, DeepSeekMath's): the one DeepSeekMath-Instruct/RL template
    (`chat_prompt`) that SFT, RL and evaluation share: BOS, `User: {question}{suffix}\n\nAssistant:`,
    then the response as ` {response}` and EOS; no system prompt. With one (Qwen2.5-Instruct,
    Llama 3 Instruct): the template's user turn and generation prompt, rendered with Jinja as
    transformers' apply_chat_template does, then the response and the template's end of turn.

Use:
    tok = train_bpe(texts, vocab_size=4096); tok.save("out/classroom/tokenizer.tiktoken")
    tok = Tokenizer.load("out/classroom/tokenizer.tiktoken")   # or ".../tokenizer.json"
    ids = tok.encode_prompt("What is 2+3?") + tok.encode_response("2+3=5. \\boxed{5}")
Training speed: `python bench/bench_tokenizer.py`. Tests: `pytest -q tests/test_tokenizer.py`.
"""

import base64
import binascii
import codecs
import functools
import heapq
import json
import os
import unicodedata
from collections import Counter, defaultdict

import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import regex  # tiktoken's own dependency; the same Unicode-aware regex syntax as its Rust engine
import tiktoken
from tqdm import tqdm

from support.fileio import BadInput, atomic_path, write_json

# DeepSeek's spelling (full-width bars, U+2581 for spaces): a real checkpoint's ids 100000/100001.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜pad▁token｜>"

COT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
TOOL_SUFFIX = (
    "\nPlease integrate natural language reasoning with programs to solve the problem above, "
    "and put your final answer within \\boxed{}."
)

# Our pre-tokenizer: GPT-4's (cl100k) pattern in its contractions, punctuation and whitespace,
# GPT-2's for words (a word takes only its leading space, not a leading symbol: "(hello" is "("
# and "hello"), and numbers one digit per piece as in DeepSeek LLM, so "1234" can never become
# one token and arithmetic sees every digit. Each alternative is one kind of piece; BPE never
# merges across pieces.
PAT_STR = "|".join([
    r"'(?i:[sdmt]|ll|ve|re)",  # English contractions: 's 'd 'm 't 'll 've 're
    r" ?\p{L}+",  # a word with its leading space
    r"\p{N}",  # ONE digit
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",  # a run of punctuation/symbols (with its leading space)
    r"\s*[\r\n]+",  # whitespace that ends in newlines
    r"\s+(?!\S)",  # whitespace, leaving the last space to the word that follows
    r"\s+",
])

# Hugging Face's ByteLevel pre-tokenizer with use_regex=true splits with GPT-2's pattern.
GPT2_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# A tiktoken pattern that makes the whole input one piece (used when Python pre-tokenizes).
WHOLE_PIECE_PAT_STR = r"[\s\S]+"


def chat_prompt(question, suffix=COT_SUFFIX):
    """The DeepSeekMath-Instruct/RL prompt (after BOS): the model answers after "Assistant:"."""
    return f"User: {question}{suffix}\n\nAssistant:"


class Tokenizer:
    """Byte-level BPE: tiktoken does the BPE; the pre-tokenizer splits text into pieces first.

    mergeable_ranks: {token bytes: id}; tiktoken merges the adjacent pair whose concatenation has
        the lowest rank, so ranks are merge priorities and ids at once.
    special_tokens: {string: id}, the tokens outside the BPE (BOS, EOS, a template's), decoded by
        `decode`; `encode` reads none but those in `added_tokens` (a special token's string inside
        a text is plain text there: a document cannot inject a BOS or an EOS), and
        `encode_with_special_tokens` reads them all, for chat text (see `encode_prompt`).
    pat_str: the regex tiktoken splits text with (its matches are the pieces).
    split_patterns: for pre-tokenizers that are no single regex (DeepSeek's: a Sequence of Split
        steps), the regexes applied one after the other in Python, each splitting every piece
        into its matches and the text between them; tiktoken then encodes each piece whole.
    bos, eos, pad: the special tokens' strings; eos is a list whose first token ends a response
        (the chat template's end of turn when there is one) and any of which ends generation.
        A tokenizer without BOS (Qwen2's) gets bos=None: bos_id is then the pad token, Qwen2's
        <|endoftext|>, which its pretraining puts between documents.
    normalizer: None, or "NFC" (Qwen2 normalizes text to Unicode NFC before splitting it).
    chat_template: a Hugging Face (Jinja) chat template; None = DeepSeekMath's (`chat_prompt`).
    added_tokens: {string: id}, a Hugging Face tokenizer's added tokens that are not special (the
        characters of the bytes that never occur in UTF-8, see `_hf_mergeable_ranks`; Qwen2.5's
        <tool_call>): the `tokenizers` library reads them in any text, so `encode` does too.
    """

    def __init__(self, mergeable_ranks, special_tokens, pat_str, split_patterns=(), bos=BOS,
                 eos=(EOS,), pad=PAD, normalizer=None, chat_template=None, added_tokens=None):
        missing = [t for t in (bos, *eos, pad) if t is not None and t not in special_tokens]
        if missing or not eos:
            raise BadInput(f"tokenizer has no special token {(missing or ['EOS'])[0]!r}; its BOS, EOS "
                           f"and PAD must be special tokens (ours and DeepSeek's: {BOS!r}, {EOS!r})")
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = special_tokens
        self.pat_str = pat_str
        self.split_patterns = list(split_patterns)
        self.normalizer = normalizer
        # Hugging Face runs these with Oniguruma, where `$` and `^` match at every line end/start;
        # MULTILINE gives Python's `regex` the same meaning.
        self._splitters = [regex.compile(p, regex.MULTILINE) for p in self.split_patterns]
        self.added_tokens = dict(added_tokens or {})
        self._added = _alternation(self.added_tokens)
        self._specials = _alternation(special_tokens)
        self._added_ids = {**special_tokens, **self.added_tokens}
        self._all_added = _alternation(self._added_ids)
        self._memo = {}
        self.encoding = tiktoken.Encoding(
            "deepseekmath-bpe", pat_str=pat_str,
            mergeable_ranks=mergeable_ranks, special_tokens=special_tokens,
        )
        self.bos, self.eos, self.pad = bos, list(eos), pad
        self.chat_template = chat_template
        self.response_prefix = " "  # what follows "Assistant:" before the response
        if chat_template:
            self.response_prefix, end_of_turn = self._template_response_parts()
            self.eos = [end_of_turn] + [t for t in eos if t != end_of_turn]
        self.eos_ids = [special_tokens[t] for t in self.eos]
        self.eos_id = self.eos_ids[0]
        # Without a PAD token (a checkpoint may have none) EOS pads: padding is masked out anyway.
        self.pad_id = special_tokens[pad] if pad else self.eos_id
        self.bos_id = special_tokens[bos] if bos else self.pad_id
        self.n_vocab = self.encoding.n_vocab

    def encode(self, text):
        """Token ids of `text` (no BOS/EOS; special-token strings in `text` are plain text, the
        `added_tokens` are read)."""
        return self._encode_around(self._added, text)

    def encode_with_special_tokens(self, text):
        """Token ids of `text` in which special-token strings are those tokens, as the `tokenizers`
        library encodes (and transformers' apply_chat_template): for chat text."""
        return self._encode_around(self._all_added, text)

    def _encode_around(self, tokens, text):
        """Ids of `text` in which the matches of `tokens` (an `_alternation` of added tokens, or
        None) are those tokens, and the text around them is encoded. The library also splits
        added tokens out of the raw text first, then normalizes and pre-tokenizes each piece."""
        ids, end = [], 0
        for match in tokens.finditer(text) if tokens else ():
            ids += self._encode_plain(text[end:match.start()]) + [self._added_ids[match.group()]]
            end = match.end()
        return ids + self._encode_plain(text[end:])

    def _encode_plain(self, text):
        """Token ids of `text` with no added token read in it: normalized, split, BPE-encoded."""
        if self.normalizer == "NFC":
            text = unicodedata.normalize("NFC", text)
        if not self._splitters:
            return self.encoding.encode_ordinary(text)
        return list(self._encode_from_step(0, text))

    def _encode_from_step(self, step, text):
        """Ids of `text` split by split steps `step`, `step` + 1, ... then BPE-encoded piece by
        piece. Short texts (words, mostly) recur, so their ids are memoised per step."""
        if step == len(self._splitters):
            return self.encoding.encode_ordinary(text)
        ids = self._memo.get((step, text))
        if ids is None:
            ids = [i for piece in _split_isolated(self._splitters[step], text)
                   for i in self._encode_from_step(step + 1, piece)]
            if len(text) <= 32:
                if len(self._memo) >= 1 << 17:
                    self._memo.clear()
                self._memo[step, text] = ids
        return ids

    def known(self, ids):
        """The ids this tokenizer has text for. A model's vocabulary may be padded past the
        tokenizer's (Qwen2.5's 151,936 rows for 151,665 tokens), and sampling can pick a padded
        id: it decodes to nothing, as transformers decodes it."""
        return [i for i in map(int, ids) if 0 <= i <= self.encoding.max_token_value]

    def decode(self, ids):
        """The text of `ids`; a token sequence cut inside a UTF-8 character decodes to U+FFFD."""
        return self.encoding.decode(self.known(ids))

    def decode_with_offsets(self, ids):
        """(text, starts): decode(ids) and, per token, the offset in it of the first character
        that token completes. A sampled output can hold invalid UTF-8 (a multi-byte character's
        tokens out of order, or cut by the end), on which tiktoken's own decode_with_offsets
        raises; here such bytes become U+FFFD, as in decode, so offsets index the same text."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces, starts, length = [], [], 0
        known = self.known(ids)
        token_bytes = dict(zip(known, self.encoding.decode_tokens_bytes(known)))  # an id's bytes are fixed
        for i in map(int, ids):
            starts.append(length)
            pieces.append(decoder.decode(token_bytes.get(i, b"")))
            length += len(pieces[-1])
        pieces.append(decoder.decode(b"", final=True))
        return "".join(pieces), starts

    def encode_prompt(self, question, suffix=COT_SUFFIX):
        """The prompt ids of one question: the chat template's text up to the assistant's turn,
        or BOS + DeepSeekMath's `chat_prompt`.

        A special-token string in the question is that token, here and in `encode_response`
        alike: transformers' apply_chat_template reads the whole conversation so, and training
        sequences must be the ids a served model is given. The risk is in the data: a question or
        solution that holds a special-token string (an EOS, "<|im_end|>") changes the turn
        structure, ending the turn there or opening another.
        """
        if self.chat_template:
            return self.encode_with_special_tokens(self.render_chat(question + suffix))
        return [self.bos_id] + self.encode_with_special_tokens(chat_prompt(question, suffix))

    def encode_response(self, response):
        """The response after the prompt (ours: one space, then the text), ended by EOS (the
        template's end of turn); special-token strings in it are tokens, as in `encode_prompt`."""
        return self.encode_with_special_tokens(self.response_prefix + response) + [self.eos_id]

    def render_chat(self, user, response=None):
        """The chat template's text of one user turn and the assistant's `response` (None: the
        generation prompt that opens the assistant's turn), as transformers renders it."""
        messages = [{"role": "user", "content": user}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        try:
            return _jinja().from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=response is None,
                bos_token=self.bos or "", eos_token=self.eos[0])
        except jinja2.TemplateError as e:  # a syntax error, a tag or a name this environment lacks
            raise BadInput(f"chat_template: {type(e).__name__}: {e} (line {getattr(e, 'lineno', '?')}); "
                           "fix the template in tokenizer_config.json, or set tokenizer_path to a tokenizer "
                           "whose template transformers renders") from None

    def _template_response_parts(self):
        """(text between the generation prompt and the response, end-of-turn token) of the chat
        template, found by rendering a conversation around a marker."""
        marker = "RESPONSE-7f3c"
        head, _, tail = self.render_chat("Q", marker).partition(marker)
        prompt = self.render_chat("Q")
        end = self._specials.match(tail)
        if not head.startswith(prompt) or end is None:
            raise BadInput("chat_template: a conversation must read generation prompt + response + "
                           f"an end-of-turn special token; it renders as {head + marker + tail!r}")
        return head[len(prompt):], end.group()

    def save(self, path):
        """Write the `.tiktoken` ranks file at `path` and the JSON sidecar `path + ".json"`."""
        with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii") as f:
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1]):
                f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")
        write_json(path + ".json", {
            "pat_str": self.pat_str,
            "split_patterns": self.split_patterns,
            "special_tokens": self.special_tokens,
            "bos": self.bos, "eos": self.eos, "pad": self.pad,
            "normalizer": self.normalizer,
            "chat_template": self.chat_template,
            "added_tokens": self.added_tokens,
        })

    @classmethod
    def load(cls, path):
        """Our `.tiktoken` file (with its `.json` sidecar), or a Hugging Face `tokenizer.json`
        (with, when beside it, tokenizer_config.json's special tokens and chat template and
        generation_config.json's EOS ids)."""
        if not os.path.isfile(path):
            raise BadInput(f"{path}: no such tokenizer file; set tokenizer_path to a .tiktoken "
                           "file written by Tokenizer.save or to a Hugging Face tokenizer.json")
        if path.endswith(".json"):
            ranks, options = _hf_tokenizer_parts(path)
            return cls(ranks, **options, **_hf_special_roles(os.path.dirname(path), options["special_tokens"]))
        ranks, options = _read_tiktoken(path)
        return cls(ranks, **options)


def load_tokenizer(cfg, checkpoint=""):
    """The tokenizer a stage uses: cfg.tokenizer_path when set; else the checkpoint's own
    (ours: tokenizer.tiktoken; a Hugging Face folder: tokenizer.json); else the one corpus.py
    trained, {out_dir}/tokenizer.tiktoken."""
    if cfg.tokenizer_path:
        return Tokenizer.load(cfg.tokenizer_path)
    for name in ("tokenizer.tiktoken", "tokenizer.json"):
        path = os.path.join(checkpoint, name)
        if checkpoint and os.path.exists(path):
            return Tokenizer.load(path)
    path = os.path.join(cfg.out_dir, "tokenizer.tiktoken")
    if not os.path.exists(path):
        raise BadInput(f"no tokenizer: {path} does not exist; run corpus.py first (it trains one) "
                       "or set --tokenizer_path=FILE (.tiktoken or tokenizer.json)")
    return Tokenizer.load(path)


def _alternation(strings):
    """A regex for any of `strings`, the longest where several start at one place (the library
    matches added tokens leftmost-longest); None when there are none."""
    if not strings:
        return None
    return regex.compile("|".join(map(regex.escape, sorted(strings, key=len, reverse=True))))


def _split_isolated(pattern, text):
    """Hugging Face's Split(behavior="Isolated"): every match is a piece, and so is the text
    between two matches. Empty pieces are dropped."""
    pieces, end = [], 0
    for match in pattern.finditer(text):
        if match.start() > end:
            pieces.append(text[end:match.start()])
        if match.end() > match.start():
            pieces.append(match.group())
        end = match.end()
    if end < len(text):
        pieces.append(text[end:])
    return pieces


# ----------------------------------------------------------------------------- training

def train_bpe(texts, vocab_size):
    """Learn a byte-level BPE with `vocab_size` ids in all: 256 bytes, the merges, BOS, EOS, PAD.

    Byte b has rank b; merge k (0-based) creates rank 256 + k; the special tokens take the last
    three ids. Ties between equally frequent pairs go to the smaller (left id, right id).
    """
    special_tokens = (BOS, EOS, PAD)
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise BadInput(f"vocab_size={vocab_size} is too small: it needs 256 byte tokens and "
                       f"{len(special_tokens)} special tokens")
    # BPE never merges across pre-token pieces, so a piece that occurs a million times needs
    # counting once, with weight a million: we count the distinct pieces ("chunks").
    pattern = regex.compile(PAT_STR)
    chunk_counts = Counter()
    for text in tqdm(texts, desc="pre-tokenizing", unit=" texts"):
        chunk_counts.update(pattern.findall(text))
    words, freqs = [], []
    for chunk, count in chunk_counts.items():
        word = list(chunk.encode("utf-8"))
        if len(word) > 1:  # a single byte has no pair to merge
            words.append(word)
            freqs.append(count)
    merges = _learn_merges(words, freqs, n_merges)
    if len(merges) < n_merges:
        raise BadInput(f"the training text has only {len(merges)} merges to learn, but "
                       f"vocab_size={vocab_size} needs {n_merges}: give more text or a smaller "
                       "vocab_size")
    token_bytes = [bytes([b]) for b in range(256)]
    for left, right in merges:
        token_bytes.append(token_bytes[left] + token_bytes[right])
    mergeable_ranks = {token: rank for rank, token in enumerate(token_bytes)}
    special_ids = {token: len(token_bytes) + i for i, token in enumerate(special_tokens)}
    return Tokenizer(mergeable_ranks, special_ids, PAT_STR)


def _learn_merges(words, freqs, n_merges):
    """Greedy BPE: repeatedly merge the most frequent adjacent pair into a new token 256, 257, ...

    words: distinct chunks as lists of token ids (modified in place); freqs: their counts.
    count(a, b) = sum over words w of freq(w) * (occurrences of a,b in w). Nothing is ever
    recounted from scratch: `words_with[pair]` holds the words that contain the pair, so a merge
    rewrites only those words, and only the pairs next to each merged occurrence change count;
    a heap of (-count, pair), whose stale entries are skipped on pop, yields the top pair.
    """
    pair_counts = defaultdict(int)
    words_with = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[i]
            words_with[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    for new_id in tqdm(range(256, 256 + n_merges), desc="BPE merges"):
        best = _pop_most_frequent(heap, pair_counts)
        if best is None:  # every chunk is a single token already
            break
        merges.append(best)
        delta = defaultdict(int)
        for i in words_with.pop(best):
            words[i], new_pairs = _merge_word(words[i], best, new_id, freqs[i], delta)
            for pair in new_pairs:
                words_with[pair].add(i)
        for pair, change in delta.items():
            if change:
                pair_counts[pair] += change
                if pair_counts[pair]:
                    heapq.heappush(heap, (-pair_counts[pair], pair))
                else:
                    del pair_counts[pair]
    return merges


def _pop_most_frequent(heap, pair_counts):
    """The pair with the highest current count (heap entries whose count is stale are dropped)."""
    while heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) == -neg_count:
            return pair
    return None


def _merge_word(word, pair, new_id, freq, delta):
    """`word` with every occurrence of `pair`, left to right without overlaps, made `new_id`,
    and the pairs with `new_id` in it; adds to delta[pair] the change of that pair's count.

    An occurrence L R between neighbours p and q turns the pairs (p,L) (L,R) (R,q) into (p,N)
    (N,q). When q starts the next occurrence, that occurrence accounts for the pair between them
    (as its (p,L), which becomes (N,N)), so no pair is counted twice.
    """
    left, right = pair
    merged, new_pairs, i, n = [], [], 0, len(word)
    while i < n:
        if word[i] == left and i + 1 < n and word[i + 1] == right:
            delta[pair] -= freq
            if merged:
                delta[word[i - 1], left] -= freq
                new_pairs.append((merged[-1], new_id))
                delta[new_pairs[-1]] += freq
            next_starts_pair = i + 3 < n and word[i + 2] == left and word[i + 3] == right
            if i + 2 < n and not next_starts_pair:
                delta[right, word[i + 2]] -= freq
                new_pairs.append((new_id, word[i + 2]))
                delta[new_pairs[-1]] += freq
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged, new_pairs


# ----------------------------------------------------------------------------- files

def _read_tiktoken(path):
    """(ranks, the other Tokenizer arguments) from a `.tiktoken` file and its sidecar.
    (tiktoken.load caches files by path in a temp folder, so a retrained file could be read stale.)
    """
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise BadInput(f"{path}:{lineno}: expected 'base64-token rank', got {line[:80]!r}; "
                               "the file is damaged: re-create it with Tokenizer.save")
    sidecar = path + ".json"
    if not os.path.isfile(sidecar):
        raise BadInput(f"{sidecar}: missing; Tokenizer.save writes it beside {path} (it holds the "
                       "special tokens and the pre-tokenizer)")
    meta = _read_json_if_there(sidecar)
    fields = ("special_tokens", "pat_str", "split_patterns")
    missing = [key for key in fields if key not in meta] if isinstance(meta, dict) else list(fields)
    if missing:
        raise BadInput(f"{sidecar}: lacks {', '.join(missing)}; the file is damaged: "
                       "re-create it with Tokenizer.save, or retrain the tokenizer (corpus.py)")
    specials = meta["special_tokens"]
    # sidecars written before Qwen2/Llama 3 support hold DeepSeek's tokens and no template; those
    # written before added tokens were read hold none, even where the tokenizer.json they were
    # converted from had some (Qwen2.5's <tool_call>): convert it again (Tokenizer.load, save)
    return ranks, dict(special_tokens=specials, pat_str=meta["pat_str"], split_patterns=meta["split_patterns"],
                       bos=meta.get("bos", BOS), eos=meta.get("eos", [EOS]),
                       pad=meta.get("pad", PAD if PAD in specials else None),
                       normalizer=meta.get("normalizer"), chat_template=meta.get("chat_template"),
                       added_tokens=meta.get("added_tokens"))


def _read_json_if_there(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: not valid JSON ({e})")


def _hf_special_roles(folder, special_tokens):
    """bos, eos, pad and chat_template of a Hugging Face folder: tokenizer_config.json's tokens
    and template (or chat_template.jinja's, where newer transformers write it), then the EOS ids
    of generation_config.json and config.json (instruct models list several: Llama 3.1's
    <|end_of_text|>, <|eom_id|>, <|eot_id|>). No tokenizer_config.json: DeepSeek's tokens."""
    config = _read_json_if_there(os.path.join(folder, "tokenizer_config.json"))
    if not config:
        return dict(bos=BOS, eos=[EOS], pad=PAD if PAD in special_tokens else None)

    def token(key):  # a string, or an AddedToken written as {"content": ...}
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    by_id = {i: t for t, i in special_tokens.items()}
    eos = [token("eos_token")]
    for name in ("generation_config.json", "config.json"):
        ids = _read_json_if_there(os.path.join(folder, name)).get("eos_token_id")
        eos += [by_id.get(i) for i in (ids if isinstance(ids, list) else [ids])]
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = {t["name"]: t["template"] for t in template}.get("default")
    jinja_file = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        template = open(jinja_file, encoding="utf-8").read()
    return dict(bos=token("bos_token"), eos=list(dict.fromkeys(t for t in eos if t)),
                pad=token("pad_token"), chat_template=template)


def _raise_template_error(message):
    raise BadInput(f"chat_template: {message}")


class _GenerationBlock(jinja2.ext.Extension):
    """transformers' {% generation %}...{% endgeneration %} (its AssistantTracker), which marks the
    assistant's text for apply_chat_template's assistant masks (some Qwen and SmolLM templates
    use it). We mask by the prompt/response split instead, so the body renders as plain text, in
    a call block as transformers' does (a `set` inside it stays inside)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@functools.cache
def _jinja():
    """transformers' chat-template environment: sandboxed, trim_blocks and lstrip_blocks, loop
    controls, {% generation %}, raise_exception. It has no strftime_now, so Llama 3.2's template
    writes its fixed default date: a prompt does not change with the day it is rendered."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.globals["raise_exception"] = _raise_template_error
    return env


def _byte_level_chars():
    """{character: byte} of Hugging Face's ByteLevel (GPT-2's bytes_to_unicode): printable bytes
    stand for themselves; the 68 others become chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + n): b for n, b in enumerate(others)})
    return chars


def _hf_tokenizer_parts(path):
    """(ranks, {special_tokens, added_tokens, pat_str, split_patterns, normalizer}: the other
    Tokenizer arguments) of a Hugging Face byte-level BPE `tokenizer.json` (DeepSeek's, Qwen2's,
    Llama 3's), for ids identical to the `tokenizers` library's.

    Supported (anything else is a BadInput naming it):
      normalizer: null, NFC (Qwen2), or a Sequence of those;
      pre_tokenizer: ByteLevel(add_prefix_space=false), alone, or last in a Sequence whose other
        steps are Split(pattern, behavior="Isolated", invert=false) and Digits; a ByteLevel with
        use_regex=true adds GPT-2's pattern as a last split;
      model: BPE, no dropout, no byte_fallback, no continuing_subword_prefix/end_of_word_suffix,
        the 256 ByteLevel characters in the vocab (a byte that never occurs in UTF-8 may have an
        added token instead, or none: see `_hf_mergeable_ranks`), every other vocab entry the
        result of a merge or an added token, and merge results' ids ascending in merge order
        (what a BPE trainer writes);
      decoder: ByteLevel;
      added_tokens: lstrip, rstrip and single_word false (DeepSeek's, Qwen2's and Llama 3's are:
        the library then matches a token's text alone, as we do); normalized=true only with no
        normalizer (DeepSeek's), since under NFC the library matches such a token in the
        normalized text, where a combining mark after it joins its last character (U+0338 makes
        "<x>" "<x≯"). An added token in the vocab has its vocab id, as in the library; those that
        are not BPE tokens become tiktoken special tokens; the non-special ones are also read by
        `encode` (Tokenizer.added_tokens).
    Differences by design: the post_processor is ignored (`encode` adds no BOS; encode_prompt
    does), and `encode` reads special added tokens' strings as plain text (the library's encode
    splits them out, as our `encode_with_special_tokens` does).
    Why it is exact: the library merges pairs by their rank in `merges`; tiktoken merges by the
    rank of the resulting token and takes a piece that is a whole token at once (the library's
    ignore_merges). With ids in merge order and each token made by one merge, both give the same
    tokens (as tiktoken's GPT-2 does). A single split regex becomes tiktoken's pat_str (Rust
    fancy-regex); several run in Python's `regex`; both with ^ and $ per line, as in the library's
    Oniguruma. Not covered: regex syntax only Oniguruma knows, and patterns that can match the
    empty string (the engines step past empty matches differently).
    """
    with open(path, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: not valid JSON ({e})")
    if not isinstance(hf, dict) or "model" not in hf:
        raise BadInput(f"{path}: not a Hugging Face tokenizer.json (no 'model' key)")

    def unsupported(what):
        return BadInput(f"{path}: unsupported {what}; we read byte-level BPE tokenizers like "
                        "DeepSeek's (see tokenizer._hf_tokenizer_parts for what is supported)")

    normalizer = hf.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = [step.get("type") for step in steps if step]
    if kinds not in ([], ["NFC"]):
        raise unsupported(f"normalizer {'+'.join(kinds)} (only NFC, Qwen2's, or none)")
    decoder = hf.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise unsupported(f"decoder {decoder.get('type')} (byte-level BPE decodes with ByteLevel)")
    patterns = _hf_split_patterns(hf.get("pre_tokenizer"), unsupported)
    added = hf.get("added_tokens", [])
    for token in added:
        flag = next((f for f in ("lstrip", "rstrip", "single_word") if token.get(f)), None)
        if flag:
            raise unsupported(f"added token {token['content']!r} with {flag}=true (the library's "
                              "match then depends on the text around the token)")
        if token.get("normalized") and kinds:
            raise unsupported(f"added token {token['content']!r} with normalized=true under the "
                              f"{kinds[0]} normalizer (the library matches it in normalized text)")
    plain = {t["content"]: t["id"] for t in added if not t.get("special")}
    ranks = _hf_mergeable_ranks(hf["model"], plain, unsupported)
    rank_ids = set(ranks.values())
    ids = {t["content"]: hf["model"]["vocab"].get(t["content"], t["id"]) for t in added}
    special_tokens = {token: i for token, i in ids.items() if i not in rank_ids}
    orphans = [token for token, i in hf["model"]["vocab"].items()
               if i not in rank_ids and i not in special_tokens.values()]
    if orphans:
        raise unsupported(f"vocab: {len(orphans)} tokens (e.g. {orphans[0]!r}) are neither bytes, "
                          "merge results nor added tokens")
    options = dict(special_tokens=special_tokens, added_tokens={token: ids[token] for token in plain},
                   normalizer=(kinds or [None])[0])
    if len(patterns) == 1:
        # One split step: the matches AND the text between them are pieces; tiktoken keeps only
        # matches, so a second alternative takes the characters where no match starts.
        pat_str = f"(?m:{patterns[0]})|(?:(?!(?m:{patterns[0]}))[\\s\\S])+"
        return ranks, dict(options, pat_str=pat_str, split_patterns=[])
    return ranks, dict(options, pat_str=WHOLE_PIECE_PAT_STR, split_patterns=patterns)


def _occurs_in_utf8(byte):
    """Whether some UTF-8 text has `byte`: all do but 0xC0 and 0xC1 (they would start overlong
    two-byte forms) and 0xF5-0xFF (they would start code points past U+10FFFF)."""
    return byte not in (0xC0, 0xC1) and byte < 0xF5


def _hf_split_patterns(pre_tokenizer, unsupported):
    """The pre-tokenizer as a list of regexes, each applied to every piece (Split "Isolated")."""
    if not pre_tokenizer:
        raise unsupported("pre_tokenizer null (byte-level BPE needs ByteLevel)")
    steps = pre_tokenizer["pretokenizers"] if pre_tokenizer["type"] == "Sequence" else [pre_tokenizer]
    if not steps or steps[-1]["type"] != "ByteLevel":
        raise unsupported("pre_tokenizer: ByteLevel must be the last step")
    patterns = []
    for step in steps[:-1]:
        if step["type"] == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            pattern = step["pattern"]
            patterns.append(pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"]))
        elif step["type"] == "Digits":
            # Digits isolates every numeric character (individual_digits) or every run of them.
            patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        else:
            kind = step["type"] + (f"(behavior={step.get('behavior')}, invert={step.get('invert')})"
                                   if step["type"] == "Split" else "")
            raise unsupported(f"pre_tokenizer step {kind}")
    byte_level = steps[-1]
    if byte_level.get("add_prefix_space", True):
        raise unsupported("ByteLevel add_prefix_space=true (it changes the text)")
    if byte_level.get("use_regex", True):
        patterns.append(GPT2_PAT_STR)
    return patterns


def _hf_mergeable_ranks(model, plain_added, unsupported):
    """{token bytes: id} for the bytes and every merge result, checked to be in merge order.

    A byte whose ByteLevel character is not in the vocab takes the id of a non-special added
    token of that character (`plain_added`, {content: id}): the library decodes that token to the
    byte (its ByteLevel decoder maps each character of a token to its byte), as tiktoken decodes
    a byte token. So may be listed the 13 bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5-0xFF:
    "À", "Á", "õ" ... "ÿ"), which no text's bytes need: DeepSeek LLM's tokenizer has 15 added
    tokens beyond its 100,000, BOS and EOS among them. The library then also reads those
    characters in text as the added tokens ("ü" is one, and decodes to U+FFFD), and so does our
    `encode` (Tokenizer.added_tokens). Such a byte may also have no token at all; any other byte
    must have one, or some text could not be encoded.
    """
    if model.get("type") != "BPE":
        raise unsupported(f"model {model.get('type')}")
    for key in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise unsupported(f"BPE option {key}={model[key]!r}")
    vocab = model["vocab"]
    to_byte = _byte_level_chars()
    ids = {c: vocab.get(c, plain_added.get(c)) for c in to_byte}
    missing = [c for c, i in ids.items() if i is None and _occurs_in_utf8(to_byte[c])]
    if missing:
        raise unsupported(f"vocab: byte {to_byte[missing[0]]:#04x} ({missing[0]!r}) has no token")
    ranks = {bytes([to_byte[c]]): i for c, i in ids.items() if i is not None}
    previous = -1
    for k, merge in enumerate(model["merges"]):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merged_id = vocab.get(left + right)
        if merged_id is None or left not in vocab or right not in vocab:
            raise unsupported(f"merge #{k} {left!r} {right!r}: a token is not in the vocab")
        if merged_id <= previous:
            raise unsupported(f"merge #{k} {left!r} {right!r} -> id {merged_id}, not above the "
                              f"previous merge's id {previous} (ids must follow merge order)")
        previous = merged_id
        try:
            ranks[bytes(to_byte[c] for c in left + right)] = merged_id
        except KeyError:
            raise unsupported(f"vocab token {left + right!r}: not made of ByteLevel characters")
    return ranks
