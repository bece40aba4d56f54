"""Data: the bundled `python_stdlib` corpus, tokenizers and the packed, resumable pipeline."""
from data.pipeline import (BATCH_KEYS, count_batches, default_config, describe_corpus,
                           make_lm_dataset, make_lm_iterator, unigram_entropy)
from data.tokenizers import ByteTokenizer, get_tokenizer
