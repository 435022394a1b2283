"""The shipped WordPiece tokenizer (HuggingFace `tokenizers`) and safe prompt encoding.

tokenizer.json was trained once, with the vglaw weights it belongs to: a BERT-style uncased WordPiece
(BertNormalizer, BertPreTokenizer, [CLS] $A [SEP]; WordPieceTrainer, vocab_size 400, min_frequency 1,
special tokens [PAD] [UNK] [CLS] [SEP] as ids 0..3, so encode pads with 0) on the first 5000 training-split
expressions of edgestack.train.referring. It is data, not rebuilt: the trainer breaks ties between equally
frequent merges differently from run to run, and the shipped weights index its ids.

Prompts come from operators and line configs, so encoding never crashes on what people type:
- empty or whitespace-only text, or text longer than MAX_CHARS: EdgestackError;
- more word pieces than fit in MAX_LENGTH (40, [CLS] and [SEP] included): truncated, with a warning;
- words the vocabulary has never seen (typos, another language, emoji) become [UNK] or sub-word pieces, with a
  warning naming them; when no word at all is known the prompt cannot mean anything to the model: EdgestackError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgestack.errors import EdgestackError

MAX_LENGTH = 40
MAX_CHARS = 1000
SHIPPED = Path(__file__).parent / "tokenizer.json"


@dataclass
class Prompt:
    text: str
    ids: np.ndarray  # int64 [MAX_LENGTH]
    attention_mask: np.ndarray  # int64 [MAX_LENGTH], 1 = real token
    tokens: list[str]
    warnings: list[str] = field(default_factory=list)


def load_tokenizer(path: str | Path = SHIPPED):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise EdgestackError(f"tokenizer file {path} not found; a vglaw bundle or the package ships tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise EdgestackError(f"{path} is not a valid tokenizer.json ({exc}); re-export the bundle") from None
    tokenizer.encode_special_tokens = True  # "[SEP]" typed in a prompt is text, not the model's own marker
    return tokenizer


def encode(tokenizer, text: object) -> Prompt:
    """Token ids and attention mask for one prompt, padded to MAX_LENGTH; see the module docstring for limits."""
    if not isinstance(text, str):
        raise EdgestackError(f"prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise EdgestackError("prompt is empty; describe the defect, e.g. \"the scratch near the top left\"")
    if len(text) > MAX_CHARS:
        raise EdgestackError(f"prompt has {len(text)} characters, more than {MAX_CHARS}; shorten it to the "
                             "defect's description")
    encoding = tokenizer.encode(text)
    pieces: dict[int, list[int]] = {}  # word index -> its token ids
    spans: dict[int, tuple[int, int]] = {}
    for token_id, word, (start, end) in zip(encoding.ids, encoding.word_ids, encoding.offsets):
        if word is not None:
            pieces.setdefault(word, []).append(token_id)
            spans[word] = (spans.get(word, (start, end))[0], end)
    if not pieces:
        raise EdgestackError(f"prompt {text!r} holds no words after normalisation; describe the defect in words")
    unk = tokenizer.token_to_id("[UNK]")
    # A word the model knows is one whole-word token; [UNK] or a string of sub-word pieces is a word it never saw.
    unknown = [text[slice(*spans[w])] for w, ids in pieces.items() if unk in ids]
    pieced = [text[slice(*spans[w])] for w, ids in pieces.items() if unk not in ids and len(ids) > 1]
    if len(unknown) + len(pieced) == len(pieces):
        raise EdgestackError(f"no word of the prompt {text!r} is in the vocabulary (English defect descriptions: "
                             "scratch/crack/spot/stain/dent, positions such as \"top left\", sizes such as "
                             "\"largest\"); rephrase it")
    notes = []
    if unknown:
        notes.append(f"unknown words read as [UNK]: {', '.join(repr(w) for w in unknown)}")
    if pieced:
        notes.append(f"words not in the vocabulary, read as sub-word pieces: {', '.join(repr(w) for w in pieced)}")
    ids = list(encoding.ids)
    if len(ids) > MAX_LENGTH:
        dropped = tokenizer.decode(ids[MAX_LENGTH - 1:-1])
        notes.append(f"prompt is {len(ids)} tokens, over the {MAX_LENGTH} the model reads; dropped the end: "
                     f"{dropped[:60]!r}{'...' if len(dropped) > 60 else ''}")
        ids = ids[:MAX_LENGTH - 1] + [ids[-1]]
    tokens = [tokenizer.id_to_token(i) for i in ids]
    padded = np.zeros(MAX_LENGTH, np.int64)
    padded[: len(ids)] = ids
    mask = np.zeros(MAX_LENGTH, np.int64)
    mask[: len(ids)] = 1
    return Prompt(text, padded, mask, tokens, notes)
