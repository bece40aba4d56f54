"""asr_speech: the encoder-heavy model (configs/asr_encoder_heavy.py, 10/1 blocks, 4.31M
params) on the espeak-ng corpus ``synthetic_speech`` (data/speech_synth.py: 4000 train
utterances, 5.4 h, 60 voices, sentences of the stdlib docs), with its SentencePiece tokenizer
(256 pieces; pad/bos/eos ids equal the model's defaults). The corpus is built on first use
(about 3 min on 2 cores), or beforehand with ``python -m data.build_speech``.

  python train/main.py --config configs/asr_speech.py --workdir workdirs/asr_speech
  python infer/asr.py --checkpoint workdirs/asr_speech/export a.wav
"""
from configs import asr_encoder_heavy


def get_config():
  c = asr_encoder_heavy.get_config()
  c.data.name = "synthetic_speech"
  c.data.num_buckets = 8        # 2D: 8 duration groups x 2 token sub-buckets = 16 shapes
  c.data.num_subbuckets = 2
  c.data.max_duration = 120.0   # padded audio seconds per batch
  c.train.steps = 2400
  c.train.log_every = 50
  c.train.eval_every = 800
  c.train.checkpoint_every = 400
  return c
