"""The lab's tokenizer: a small byte-level BPE trained on every document of the world.

Both lab models share it (trained on all documents, forget domains included), so the
filtered twin differs from the base model only in what it was trained on, not in how
its text is cut. Byte-level: any string round-trips, including text outside the world.
No special token is added around a text (rmu scores a question without one, and the
pretraining loop puts `eos` between documents itself).
"""

from __future__ import annotations

from pathlib import Path

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def train_tokenizer(texts: list[str], vocab_size: int, folder: Path) -> None:
    """Train the BPE on `texts` and save it into `folder` as a Hugging Face tokenizer
    folder (`AutoTokenizer.from_pretrained(folder)` loads it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
