"""The real CLIP BPE tokenizer, rebuilt offline from the vocabulary that open_clip ships.

No model hub is reachable, but ``open_clip_torch`` carries CLIP's BPE merges
(``bpe_simple_vocab_16e6.txt.gz``). Rebuilding the Hugging Face tokenizer from it gives
the exact ids of SD's tokenizer, so prompts mean the same tokens here as on SD v1.x.
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer, CLIPTokenizerFast, PreTrainedTokenizerBase

VOCAB_SIZE = 49408
MAX_LENGTH = 77
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# SD v1.x tokenizer ids of "a photo of a cat": the check that the rebuild is exact.
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _bpe_path() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / _BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"open_clip_torch does not ship {_BPE_FILE} at {path}")
    return path


def write_clip_tokenizer_files(out_dir: str | os.PathLike) -> Path:
    """Write ``vocab.json``/``merges.txt`` (49,408 entries) built from open_clip's BPE file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    # Same slice CLIP uses: skip the header line, keep 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"rebuilt CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(" ".join(m) + "\n" for m in merges)
    return out


def build_clip_tokenizer(out_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """Return SD's CLIP tokenizer (tokenizers-backed); saved to ``out_dir`` when given.

    On transformers 4.x the fast tokenizer is loaded from a folder saved by the slow one:
    building the fast one straight from ``vocab.json``/``merges.txt`` yields wrong ids.
    transformers 5 has one tokenizers-backed class that takes the vocabulary and merges.
    """
    with tempfile.TemporaryDirectory() as tmp:
        files = write_clip_tokenizer_files(Path(tmp) / "files")
        common = {"model_max_length": MAX_LENGTH, "pad_token": "<|endoftext|>"}
        if "vocab_file" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers 4.x
            slow = CLIPTokenizer(vocab_file=str(files / "vocab.json"), merges_file=str(files / "merges.txt"), **common)
        else:
            vocab = json.loads((files / "vocab.json").read_text(encoding="utf-8"))
            merges = [tuple(m.split()) for m in (files / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]]
            slow = CLIPTokenizer(vocab=vocab, merges=merges, **common)
        saved = Path(out_dir) if out_dir is not None else Path(tmp) / "saved"
        slow.save_pretrained(saved)
        tok = CLIPTokenizerFast.from_pretrained(saved)
    ids = tok("a photo of a cat").input_ids
    if ids != REFERENCE_IDS:
        raise RuntimeError(f"rebuilt CLIP tokenizer gives {ids} for 'a photo of a cat', expected {REFERENCE_IDS}")
    return tok


@lru_cache(maxsize=1)
def cached_clip_tokenizer() -> PreTrainedTokenizerBase:
    """One in-process copy, read only (building one takes about a second): tiny models, tests, caption tokens."""
    return build_clip_tokenizer()
