"""support/tokenizer.py: BPE training against a from-scratch recount, exact round-trips on random
Unicode, the .tiktoken file, the chat template, and Hugging Face tokenizer.json files giving the
very ids of the `tokenizers` library (BPEs trained by it with GPT-2's and Llama-3's pre-tokenizers,
with DeepSeek's Sequence of Split pre-tokenizers, and with ^/$ anchors), their added tokens
(DeepSeek's characters of the bytes never in UTF-8; flags we refuse), and their unsupported parts;
chat templates rendered and read as transformers does ({% generation %}, special-token strings in
a conversation)."""

import json
import random
from collections import Counter

import pytest
import regex
import tiktoken.load
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from support.fileio import BadInput
from support.tokenizer import (BOS, COT_SUFFIX, EOS, PAD, PAT_STR, TOOL_SUFFIX, Tokenizer, _split_isolated,
                               chat_prompt, train_bpe)

WORDS = ("the of and a to in is you that it he was for on are as with his they I at be this "
         "have from or one had by word but not what all were we when your can said there use an "
         "each which she do how their if will up other about out many then them these so some "
         "her would make like him into time has look two more write go see number no way could "
         "people my than first water been call who oil its now find long down day did get come "
         "made may part triangle sum prime factor equation solve answer").split()
EXTRAS = ["数学", "方程式", "한국어", "ひらがな", "Ωμέγα", "Привет", "naïve", "😀", "🚀", "$x^2+1$",
          "\\frac{1}{2}", "don't", "it's", "...", "?!", "\t", "  "]


def make_corpus(n_docs, seed=0):
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(20, 80)):
            roll = rng.random()
            if roll < 0.1:
                parts.append(str(rng.randint(0, 10**rng.randint(1, 7))))
            elif roll < 0.15:
                parts.append(rng.choice(EXTRAS))
            else:
                word = rng.choice(WORDS)
                parts.append(word.capitalize() if roll > 0.95 else word)
            if rng.random() < 0.1:
                parts.append(rng.choice([".", ",", ":", "!", "\n", "\n\n", " (", ")"]))
        docs.append(" ".join(parts))
    return docs


def random_unicode(rng, n_chars):
    """Text drawn from many scripts: ASCII, C0/C1 controls, Latin, Greek/Cyrillic, combining
    marks, punctuation, CJK, Hangul, kana, emoji, and any code point at all (no surrogates:
    they are not Unicode scalar values and have no UTF-8 encoding)."""
    ranges = [(0x20, 0x7E), (0x30, 0x39), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0x24F),
              (0x370, 0x4FF), (0x300, 0x36F), (0x2000, 0x206F), (0x3000, 0x303F),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x3040, 0x30FF), (0x1F300, 0x1FAFF),
              (0x0, 0x10FFFF)]
    chars = []
    for _ in range(n_chars):
        low, high = rng.choice(ranges)
        code = rng.randint(low, high)
        chars.append(chr(0xFFFD if 0xD800 <= code <= 0xDFFF else code))
        if rng.random() < 0.15:
            chars.append(rng.choice([" ", "  ", "\n", "\r\n", "\t"]))
    return "".join(chars)


SAMPLE = (
    "The quick brown fox jumps over 13 lazy dogs; 2+2=4, 3.14159 and 1,000,000.\n"
    "Let $f(x) = x^2 - 5x + 6$. Then \\frac{1}{2} + \\sqrt{16} = 4.5!!\n\n"
    "数学很有趣：方程 x²=4 有两个解。한국어 문장입니다. ひらがなとカタカナ。\n"
    "  indented line\twith tab   and trailing spaces   \r\n"
    "Ωμέγα Привет naïve café ℂ Kelvin emoji 😀🚀✨ ... ?!? (don't) it's I'LL\n"
    "    def f(n):\n        return n * 12345\n\n\n   \n"
)


@pytest.fixture(scope="module")
def tok():
    return train_bpe(make_corpus(400), vocab_size=700)


def textbook_bpe(docs, n_merges):
    """BPE as first described, independent of the trainer's bookkeeping: every pre-token
    occurrence kept separately, every pair recounted from scratch before each merge; ties go to
    the smaller (left, right). Returns the token bytes by rank."""
    words = [list(chunk.encode("utf-8")) for doc in docs for chunk in regex.findall(PAT_STR, doc)]
    tokens = [bytes([b]) for b in range(256)]
    for new_id in range(256, 256 + n_merges):
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        tokens.append(tokens[best[0]] + tokens[best[1]])
        for k, word in enumerate(words):
            out, i = [], 0
            while i < len(word):
                if tuple(word[i:i + 2]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[k] = out
    return tokens


def test_training_equals_textbook_bpe():
    # Repeated letters and digit runs exercise overlapping occurrences (aaa -> aa a).
    docs = make_corpus(40, seed=1) + ["aaaaaaa aaaa aaa abababab aaab baaa 1111 ...."]
    n_merges = 150
    tok = train_bpe(docs, 256 + n_merges + 3)
    learned = [tok.encoding.decode_single_token_bytes(rank) for rank in range(256 + n_merges)]
    assert learned == textbook_bpe(docs, n_merges)


def test_vocabulary_layout(tok):
    assert tok.n_vocab == 700
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (697, 698, 699)
    assert tok.decode([tok.bos_id, tok.eos_id, tok.pad_id]) == BOS + EOS + PAD
    assert [tok.decode([b]) for b in range(ord("a"), ord("d"))] == ["a", "b", "c"]


def test_round_trip_random_unicode(tok):
    rng = random.Random(0)
    for n_chars in [0, 1, 2, 5, 50, 500, 5000]:
        text = random_unicode(rng, n_chars)
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_special_token_strings_are_plain_text(tok):
    text = f"{BOS}User: hi{EOS}{PAD}"
    ids = tok.encode(text)
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)
    assert tok.decode(ids) == text


def test_numbers_are_split_into_digits(tok):
    ids = tok.encode("x = 1234567890 + 3.14 and 2024 apples, 007")
    pieces = [tok.decode([i]) for i in ids]
    assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
    assert "".join(pieces) == "x = 1234567890 + 3.14 and 2024 apples, 007"
    # Common words did become single tokens: the BPE learned something.
    assert len(tok.encode(" the")) == 1


def test_save_load_round_trip(tok, tmp_path, monkeypatch):
    path = str(tmp_path / "tokenizer.tiktoken")
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)
    assert (loaded.n_vocab, loaded.bos_id, loaded.eos_id, loaded.pad_id) == \
        (tok.n_vocab, tok.bos_id, tok.eos_id, tok.pad_id)
    # The ranks file is tiktoken's own format: its loader reads it (cache off: a temp path).
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken.load.load_tiktoken_bpe(path) == tok.mergeable_ranks


def test_load_errors(tok, tmp_path):
    with pytest.raises(BadInput, match="no such tokenizer file"):
        Tokenizer.load(str(tmp_path / "missing.tiktoken"))
    path = str(tmp_path / "tokenizer.tiktoken")
    tok.save(path)
    lines = open(path).read().splitlines()
    lines[3] = "not-base64!! x"
    open(path, "w").write("\n".join(lines))
    with pytest.raises(BadInput, match="tokenizer.tiktoken:4: expected 'base64-token rank'"):
        Tokenizer.load(path)
    tok.save(path)
    (tmp_path / "tokenizer.tiktoken.json").unlink()
    with pytest.raises(BadInput, match="tokenizer.tiktoken.json: missing"):
        Tokenizer.load(path)
    for damaged, message in [("{not json", "not valid JSON"), ('{"pat_str": "x"}', "lacks special_tokens, split_patterns")]:
        (tmp_path / "tokenizer.tiktoken.json").write_text(damaged)
        with pytest.raises(BadInput, match=f"tokenizer.tiktoken.json: {message}"):
            Tokenizer.load(path)


def test_training_errors():
    with pytest.raises(BadInput, match="vocab_size=100 is too small"):
        train_bpe(["some text"], vocab_size=100)
    with pytest.raises(BadInput, match="give more text or a smaller vocab_size"):
        train_bpe(["tiny text"], vocab_size=400)


def test_chat_template(tok):
    question, response = "What is 2+3?", "We add: 2+3=5. The answer is \\boxed{5}."
    assert chat_prompt(question) == (
        "User: What is 2+3?\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.\n\nAssistant:")
    assert chat_prompt(question, TOOL_SUFFIX).endswith("within \\boxed{}.\n\nAssistant:")
    assert chat_prompt(question, "") == "User: What is 2+3?\n\nAssistant:"
    prompt, answer = tok.encode_prompt(question), tok.encode_response(response)
    assert prompt[0] == tok.bos_id and tok.decode(prompt[1:]) == chat_prompt(question, COT_SUFFIX)
    assert answer[-1] == tok.eos_id and tok.decode(answer[:-1]) == " " + response
    # Prompt and response tokenized apart equal the whole conversation tokenized at once, so
    # SFT/RL training sequences match what the model sees when it generates.
    assert prompt[1:] + answer[:-1] == tok.encode(chat_prompt(question) + " " + response)
    # special-token strings in the question and the response are tokens in both (see encode_prompt)
    assert tok.encode_prompt(f"2+3?{EOS}") == [tok.bos_id] + tok.encode_with_special_tokens(chat_prompt(f"2+3?{EOS}"))
    assert tok.encode_response(f"5{EOS}") == tok.encode(" 5") + [tok.eos_id, tok.eos_id]


# ---------------------------------------------------------------- Hugging Face tokenizer.json

# DeepSeek LLM's pre-tokenizer (also DeepSeek-V2's, and DeepSeekMath's, which share its
# tokenizer): newlines alone; letters of cased scripts with one optional leading space;
# punctuation runs; trailing whitespace; CJK runs; then every digit alone; then ByteLevel.
DEEPSEEK_LETTERS = (
    "A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943"
)
DEEPSEEK_SPLITS = [
    "[\r\n]",
    "\\s?[" + DEEPSEEK_LETTERS + "]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
]
LLAMA3_PATTERN = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                  "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

HF_PRE_TOKENIZERS = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "llama3": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "deepseek": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in DEEPSEEK_SPLITS]
        + [pre_tokenizers.Digits(individual_digits=True),
           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    # ^ and $ match at every line start/end in the library's Oniguruma: one split (tiktoken's
    # regex) and several (Python's regex) must both follow that.
    "anchors-one": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\\s+$|^ ?\\p{L}+|\\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "anchors-many": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\\s+$"), behavior="isolated"),
        pre_tokenizers.Split(Regex("^ ?\\p{L}+"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}


def hf_tokenizer_json(tmp_path, kind):
    """Train a byte-level BPE with the `tokenizers` library and save its tokenizer.json."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = HF_PRE_TOKENIZERS[kind]()
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(make_corpus(300, seed=2), trainer)
    path = str(tmp_path / f"{kind}-tokenizer.json")
    hf.save(path)
    return hf, path


def python_pieces(tok, text):
    """The pieces the Python split steps give, which tiktoken then encodes one by one."""
    pieces = [text]
    for splitter in tok._splitters:
        pieces = [part for piece in pieces for part in _split_isolated(splitter, piece)]
    return pieces


@pytest.mark.parametrize("kind", list(HF_PRE_TOKENIZERS))
def test_hugging_face_ids_identical(tmp_path, kind):
    hf, path = hf_tokenizer_json(tmp_path, kind)
    ours = Tokenizer.load(path)
    # One split regex goes to tiktoken; a Sequence of several is split in Python.
    assert bool(ours.split_patterns) == (kind in ("deepseek", "anchors-many"))
    rng = random.Random(1)
    texts = [SAMPLE, "", " ", "\n", "a  \n  b  ", "12345 678", "x\r\n\r\ny   \n",
             "one two  \nthree four \n five\n\nsix  ", "word\n word 12\n34 \n"]
    texts += make_corpus(20, seed=3) + [random_unicode(rng, n) for n in [3, 30, 300, 3000]]
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == text
        if ours.split_patterns:  # the Python pre-tokenizer gives the library's very pieces
            to_byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            ours_pieces = [to_byte_level.pre_tokenize_str(p)[0][0] for p in python_pieces(ours, text)]
            assert ours_pieces == [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(text)]
    assert ours.bos_id == hf.token_to_id(BOS) and ours.eos_id == hf.token_to_id(EOS)
    assert ours.pad_id == hf.token_to_id(PAD)
    # Saved as .tiktoken (with its split steps) and loaded again: the same ids.
    ours.save(str(tmp_path / "converted.tiktoken"))
    assert Tokenizer.load(str(tmp_path / "converted.tiktoken")).encode(SAMPLE) == ours.encode(SAMPLE)


@pytest.mark.parametrize("edit, message", [
    (lambda j: j.update(normalizer={"type": "NFKC"}), "unsupported normalizer NFKC"),
    (lambda j: j.update(pre_tokenizer={"type": "Metaspace", "replacement": "_"}),
     "ByteLevel must be the last step"),
    (lambda j: j["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed"),
     "pre_tokenizer step Split\\(behavior=Removed"),
    (lambda j: j["pre_tokenizer"]["pretokenizers"][-1].update(add_prefix_space=True),
     "add_prefix_space=true"),
    (lambda j: j["model"].update(type="WordPiece"), "unsupported model WordPiece"),
    (lambda j: j["model"].update(byte_fallback=True), "BPE option byte_fallback"),
    (lambda j: j["model"]["merges"].insert(0, j["model"]["merges"].pop(40)),
     "ids must follow merge order"),
    (lambda j: j.update(decoder={"type": "Metaspace"}), "unsupported decoder Metaspace"),
])
def test_hugging_face_unsupported(tmp_path, edit, message):
    _, path = hf_tokenizer_json(tmp_path, "deepseek")
    spec = json.load(open(path, encoding="utf-8"))
    edit(spec)
    json.dump(spec, open(path, "w", encoding="utf-8"))
    with pytest.raises(BadInput, match=message):
        Tokenizer.load(path)


@pytest.mark.parametrize("flag", ["lstrip", "rstrip", "single_word"])
def test_added_token_flags_that_change_its_match_are_refused(tmp_path, flag):
    # With the flag the library's match takes in the spaces beside the token (lstrip, rstrip) or
    # needs no letter beside it (single_word), so its ids differ from matching the text alone.
    text = "x <tool> y<tool>z"
    ids = {}
    for flagged in (False, True):
        hf, path = hf_tokenizer_json(tmp_path, "deepseek")
        hf.add_special_tokens([AddedToken("<tool>", **{flag: flagged})])
        hf.save(path)
        ids[flagged] = hf.encode(text, add_special_tokens=False).ids
        if not flagged:
            assert Tokenizer.load(path).encode_with_special_tokens(text) == ids[False]
    assert ids[True] != ids[False]
    with pytest.raises(BadInput, match=f"unsupported added token '<tool>' with {flag}=true"):
        Tokenizer.load(path)


def test_normalized_added_tokens(tmp_path):
    # Without a normalizer normalized=true changes nothing: DeepSeek's BOS and EOS have it.
    hf, path = hf_tokenizer_json(tmp_path, "deepseek")
    hf.add_special_tokens([AddedToken("<x>", normalized=True)])
    hf.save(path)
    text = f"{BOS}a<x>\u0338 {EOS}"
    assert Tokenizer.load(path).encode_with_special_tokens(text) == hf.encode(text, add_special_tokens=False).ids
    # Under NFC the library matches it in the normalized text, where U+0338 after ">" makes "≯":
    # "<x>" is then no token, though NFC leaves "<x>" itself as it is.
    hf, folder = family_folder(tmp_path, "qwen2")
    hf.add_special_tokens([AddedToken("<x>", normalized=True)])
    hf.save(str(folder / "tokenizer.json"))
    assert "<x>" not in hf.encode("a<x>\u0338", add_special_tokens=False).tokens
    with pytest.raises(BadInput, match="added token '<x>' with normalized=true under the NFC normalizer"):
        Tokenizer.load(str(folder / "tokenizer.json"))


# The 13 bytes that never occur in UTF-8, whose ByteLevel characters DeepSeek LLM's tokenizer.json
# may list as added tokens (it has 15 added tokens beyond a 100,000-token vocab, BOS and EOS among
# them; DeepSeek-MoE issue #14).
NEVER_IN_UTF8 = [chr(b) for b in (0xC0, 0xC1, *range(0xF5, 0x100))]  # "À", "Á", "õ" ... "ÿ"


@pytest.mark.parametrize("layout", ["missing from the vocab", "in the vocab", "in the vocab, other ids"])
def test_added_tokens_for_bytes_never_in_utf8_give_the_library_ids(tmp_path, layout):
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = HF_PRE_TOKENIZERS["deepseek"]()
    hf.decoder = decoders.ByteLevel()
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if layout != "missing from the vocab"
                or c not in NEVER_IN_UTF8]
    trainer = trainers.BpeTrainer(vocab_size=900, initial_alphabet=alphabet, show_progress=False)
    hf.train_from_iterator(make_corpus(300, seed=2), trainer)
    hf.add_special_tokens([AddedToken(BOS, normalized=True), AddedToken(EOS, normalized=True)])
    # as DeepSeek's: non-special, normalized; and a non-special token of text (Qwen2.5's kind)
    hf.add_tokens([AddedToken(c, normalized=True, special=False) for c in NEVER_IN_UTF8 + ["<tool_call>"]])
    path = str(tmp_path / "tokenizer.json")
    hf.save(path)
    if layout == "in the vocab, other ids":  # the library gives such a token its vocab id
        spec = json.load(open(path, encoding="utf-8"))
        for k, token in enumerate(t for t in spec["added_tokens"] if t["content"] in NEVER_IN_UTF8):
            token["id"] = hf.get_vocab_size() + k
        json.dump(spec, open(path, "w", encoding="utf-8"))
        hf = HFTokenizer.from_file(path)
    ours = Tokenizer.load(path)
    rng = random.Random(6)
    texts = [SAMPLE, "Führer für Ørsted: põe ÿ À Á ÷ ý þ", "<tool_call>ü<tool_call>", "ü"]
    texts += [random_unicode(rng, n) + "".join(rng.choices(NEVER_IN_UTF8, k=3)) for n in [3, 30, 300]]
    for text in texts:
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == ids, text  # the library reads non-special added tokens anywhere
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)  # "ü" is U+FFFD
        assert ours.encode_with_special_tokens(BOS + text + EOS) == hf.encode(BOS + text + EOS).ids
    assert ours.bos_id not in ours.encode(BOS)  # a special token's string is still plain text
    assert ours.decode([hf.token_to_id("ü")]) == "\ufffd"  # the byte 0xFC, as the library decodes it
    ours.save(str(tmp_path / "converted.tiktoken"))
    assert Tokenizer.load(str(tmp_path / "converted.tiktoken")).encode(texts[1]) == ours.encode(texts[1])


# ---------------------------------------------------------------- Qwen2 and Llama 3 folders
# Their tokenizer.json layouts (Qwen2: NFC normalizer, digits one by one; Llama 3: digits in
# threes), with special tokens and chat templates as their tokenizer_config.json has them: Qwen2.5's
# template without its tool-call branches, Llama 3 Instruct's as released.
QWEN2_PATTERN = LLAMA3_PATTERN.replace("\\p{N}{1,3}", "\\p{N}")
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\\n\\n' }}{% endif %}")
FAMILY_TOKENIZERS = {
    "qwen2": dict(pattern=QWEN2_PATTERN, nfc=True, template=QWEN25_TEMPLATE,
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  config=dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"),
                  generation_eos=["<|im_end|>", "<|endoftext|>"]),
    "llama3": dict(pattern=LLAMA3_PATTERN, nfc=False, template=LLAMA3_TEMPLATE,
                   specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                             "<|end_header_id|>", "<|eot_id|>"],
                   config=dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
                   generation_eos=["<|end_of_text|>", "<|eot_id|>"]),
}


def family_folder(tmp_path, family):
    """A tokenizer folder as the hub has it: tokenizer.json trained by the `tokenizers` library,
    tokenizer_config.json, generation_config.json. Returns (library tokenizer, folder)."""
    spec = FAMILY_TOKENIZERS[family]
    hf = HFTokenizer(models.BPE())
    if spec["nfc"]:
        hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(make_corpus(300, seed=2), trainer)
    hf.add_special_tokens(spec["specials"])  # ids after the BPE's, as in both families
    folder = tmp_path / family
    folder.mkdir()
    hf.save(str(folder / "tokenizer.json"))
    config = dict(spec["config"], chat_template=spec["template"], tokenizer_class="PreTrainedTokenizerFast")
    json.dump(config, open(folder / "tokenizer_config.json", "w"))
    json.dump({"eos_token_id": [hf.token_to_id(t) for t in spec["generation_eos"]]},
              open(folder / "generation_config.json", "w"))
    return hf, folder


def special_texts(specials):
    rng = random.Random(4)
    texts = [SAMPLE, "e\u0301t\u00e9 \u212b \u1e9b\u0323 12345678 \u4e00\u4e8c\u4e09 \U0001F600\U0001F680   \t\n\n x",
             f"{specials[0]}hello{specials[-1]}\n\n{specials[1]}{specials[1]}  world {specials[2]}"]
    for _ in range(20):  # random text with special tokens dropped in anywhere
        parts = [random_unicode(rng, rng.randint(0, 40)) for _ in range(4)]
        texts.append("".join(p + rng.choice(specials) for p in parts))
    return texts + make_corpus(10, seed=5)


@pytest.mark.parametrize("family", list(FAMILY_TOKENIZERS))
def test_qwen2_and_llama3_tokenizer_ids_identical(tmp_path, family):
    hf, folder = family_folder(tmp_path, family)
    ours = Tokenizer.load(str(folder / "tokenizer.json"))
    specials = FAMILY_TOKENIZERS[family]["specials"]
    for text in special_texts(specials):
        assert ours.encode_with_special_tokens(text) == hf.encode(text, add_special_tokens=False).ids, text
        plain = text
        for s in specials:
            plain = plain.replace(s, "")
        assert ours.encode(plain) == hf.encode(plain, add_special_tokens=False).ids, plain
    assert not set(ours.encode(specials[1])) & set(ours.special_tokens.values())  # plain text there
    # the EOS ids: the template's end of turn first, then the generation config's
    expected = {"qwen2": ["<|im_end|>", "<|endoftext|>"], "llama3": ["<|eot_id|>", "<|end_of_text|>"]}[family]
    assert ours.eos_ids == [hf.token_to_id(t) for t in expected]
    assert ours.bos_id == hf.token_to_id({"qwen2": "<|endoftext|>", "llama3": "<|begin_of_text|>"}[family])


@pytest.mark.parametrize("family", list(FAMILY_TOKENIZERS))
def test_chat_template_prompts_equal_transformers(tmp_path, family):
    from transformers import AutoTokenizer
    _, folder = family_folder(tmp_path, family)
    theirs = AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.load(str(folder / "tokenizer.json"))
    for question in ["What is 2+3?", "  Ωμέγα 数学 12345 😀 \n\n it's"]:
        user = question + COT_SUFFIX
        messages = [{"role": "user", "content": user}]
        ids = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ours.encode_prompt(question, COT_SUFFIX) == ids
        # prompt + response ids are the whole conversation's, the response ending the turn
        response = "We add: 2+3=5. The answer is \\boxed{5}."
        whole = theirs.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                           tokenize=True, return_dict=False)
        conversation = ours.encode_prompt(question, COT_SUFFIX) + ours.encode_response(response)
        assert whole[:len(conversation)] == conversation and conversation[-1] == ours.eos_id
    # saved as .tiktoken and loaded again: the same template, tokens and EOS ids
    ours.save(str(tmp_path / "converted.tiktoken"))
    again = Tokenizer.load(str(tmp_path / "converted.tiktoken"))
    assert again.encode_prompt("What is 2+3?") == ours.encode_prompt("What is 2+3?")
    assert (again.eos_ids, again.bos_id, again.pad_id) == (ours.eos_ids, ours.bos_id, ours.pad_id)
    assert again.encode("e\u0301") == ours.encode("e\u0301")
    assert (ours.encode("e\u0301") == ours.encode("\u00e9")) == (family == "qwen2")  # NFC: one character


def test_chat_template_errors(tmp_path):
    _, folder = family_folder(tmp_path, "qwen2")
    config = json.load(open(folder / "tokenizer_config.json"))
    config["chat_template"] = "{{ raise_exception('no chat here') }}"
    json.dump(config, open(folder / "tokenizer_config.json", "w"))
    with pytest.raises(BadInput, match="chat_template: no chat here"):
        Tokenizer.load(str(folder / "tokenizer.json"))
    for template, error in [("{% for m in messages %}{{ m.content }}", "TemplateSyntaxError"),
                            ("{{ strftime_now('%d') }}", "UndefinedError")]:
        config["chat_template"] = template
        json.dump(config, open(folder / "tokenizer_config.json", "w"))
        with pytest.raises(BadInput, match=f"chat_template: {error}: .*fix the template in tokenizer_config.json"):
            Tokenizer.load(str(folder / "tokenizer.json"))
    config.update(chat_template=QWEN25_TEMPLATE, eos_token="<|im_stop|>")
    json.dump(config, open(folder / "tokenizer_config.json", "w"))
    with pytest.raises(BadInput, match="no special token '<\\|im_stop\\|>'"):
        Tokenizer.load(str(folder / "tokenizer.json"))


# Qwen2.5's template with transformers' assistant-mask marker around the assistant's text
QWEN25_GENERATION_TEMPLATE = QWEN25_TEMPLATE.replace(
    "    {%- if (message.role == \"user\")",
    "    {%- if message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>assistant\\n' }}\n"
    "        {%- generation %}\n"
    "            {%- set turn = message.content + '<|im_end|>' %}\n"
    "            {{- turn }}\n"
    "        {%- endgeneration %}\n"
    "        {{- '\\n' + (turn is defined) | string }}\n"
    "    {%- elif (message.role == \"user\")")


def test_generation_block_renders_as_transformers_does(tmp_path):
    from transformers import AutoTokenizer
    _, folder = family_folder(tmp_path, "qwen2")
    config = json.load(open(folder / "tokenizer_config.json"))
    json.dump(dict(config, chat_template=QWEN25_GENERATION_TEMPLATE), open(folder / "tokenizer_config.json", "w"))
    theirs = AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.load(str(folder / "tokenizer.json"))
    user, response = "What is 2+3?" + COT_SUFFIX, "2+3=5. \\boxed{5}"
    messages = [{"role": "user", "content": user}]
    conversation = messages + [{"role": "assistant", "content": response}]
    assert ours.render_chat(user) == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # the body as plain text, its `set` not seen after the block: "...<|im_end|>\nFalse"
    assert ours.render_chat(user, response) == theirs.apply_chat_template(conversation, tokenize=False)
    assert ours.render_chat(user, response).endswith(response + "<|im_end|>\nFalse")
    ids = ours.encode_prompt("What is 2+3?") + ours.encode_response(response)
    assert theirs.apply_chat_template(conversation, tokenize=True, return_dict=False)[:len(ids)] == ids


@pytest.mark.parametrize("family", list(FAMILY_TOKENIZERS))
def test_special_token_strings_in_a_chat_are_tokens_as_transformers_reads_them(tmp_path, family):
    """transformers' apply_chat_template reads special-token strings in the user's and the
    assistant's text as tokens; our prompt and response do the same."""
    from transformers import AutoTokenizer
    _, folder = family_folder(tmp_path, family)
    theirs = AutoTokenizer.from_pretrained(folder)
    ours = Tokenizer.load(str(folder / "tokenizer.json"))
    specials = FAMILY_TOKENIZERS[family]["specials"]
    question = f"What is {specials[-1]} 2+3?{specials[1]}"
    response = f"5 {specials[-1]} done {specials[0]}{specials[1]}"
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
    whole = theirs.apply_chat_template(conversation, tokenize=True, return_dict=False)
    ids = ours.encode_prompt(question, "") + ours.encode_response(response)
    assert whole[:len(ids)] == ids
    assert set(ours.special_tokens.values()) & set(ours.encode_response(response)[:-1])


def test_decode_with_offsets_replaces_invalid_utf8_as_decode_does(tok):
    # sampled outputs can hold any byte sequence: here "é" (c3 a9) cut after its first byte,
    # a stray continuation byte, and a 3-byte "€" (e2 82 ac) whose last byte comes first
    byte = {b: tok.encoding.encode_single_token(bytes([b])) for b in (0xc3, 0xa9, 0xe2, 0x82, 0xac)}
    ab = tok.encode("ab")
    ids = ab + [byte[0xc3]] + ab + [byte[0xa9]] + [byte[0xac], byte[0xe2], byte[0x82]] + ab + [byte[0xc3]]
    text, starts = tok.decode_with_offsets(ids)
    assert text == tok.decode(ids) and "\ufffd" in text
    assert len(starts) == len(ids) and starts == sorted(starts)
    for i in range(len(ids)):  # each start is where the text of the tokens before it ends
        assert text.startswith(tok.decode(ids[:i])[:starts[i]])
    valid = tok.encode("x = 3 + 4")
    assert tok.decode_with_offsets(valid) == tok.encoding.decode_with_offsets(valid)


def test_an_id_past_the_tokenizer_decodes_to_nothing_as_transformers_decodes_it(tok):
    """A model's vocabulary may be padded past its tokenizer's; a sampled padded id is no text."""
    ids = tok.encode("2 + 2 = 4")
    padded = ids[:2] + [tok.n_vocab + 7] + ids[2:]
    assert tok.decode(padded) == tok.decode(ids) == "2 + 2 = 4"
    text, starts = tok.decode_with_offsets(padded)
    assert text == "2 + 2 = 4" and len(starts) == len(padded) and starts[2] == starts[3]
