"""Shared defaults for configs. Each experiment file overrides what it needs.

Sections: ``task`` (what the loop trains, :mod:`train.tasks`), ``model`` (``name`` from
:mod:`models.registry` plus that model's config fields), ``data``, ``train``, ``optim``,
``mesh``. Every key exists here, so an unknown ``--config.x.y`` fails with the closest valid
key. Loading a config imports nothing heavy (no jax, no TFDS): only these plain defaults.
"""
import ml_collections

from data import defaults as data_defaults
from models import configs as model_configs


def train_config() -> ml_collections.ConfigDict:
  """The ``train`` section: steps, batch, cadences, checkpoints, export, profiling."""
  t = ml_collections.ConfigDict()
  t.steps = 1000
  t.global_batch_size = 16
  t.microbatches = 1  # gradient accumulation: global batch split into this many
  t.log_every = 50
  t.eval_every = 500
  t.eval_batches = 16  # -1: the whole validation split
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  t.async_checkpoint = True
  t.restore_step = ml_collections.config_dict.placeholder(int)  # None: latest
  t.export = True  # params-only export to WORKDIR/export at the end
  t.export_dtype = "float32"
  t.profile_start = 10
  t.profile_steps = 0  # >0: jax.profiler trace of that many steps into WORKDIR/profile
  t.snapshot_start = 0  # >0: from this step on, keep parameter snapshots (e.g. SGLD samples)
  t.snapshot_every = 0  # >0: one snapshot every this many steps into WORKDIR/samples/
  return t


def optim_config() -> ml_collections.ConfigDict:
  """Generic optimizer fields; a sub-section per optimizer holds its own (train/optimizer.py)."""
  o = ml_collections.ConfigDict()
  o.name = "adamw"  # adamw | coat_adamw | lamb | sgd | sso | sgld (optim/registry.py)
  o.lr = 1e-3
  o.schedule = "cosine"  # cosine | poly | constant, after linear warmup
  o.warmup_steps = 100
  o.end_lr_ratio = 0.1
  o.power = 1.0  # poly schedule
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.grad_clip = 1.0  # global-norm clipping; 0 disables
  o.trainable = ""  # regex over parameter paths; others are frozen ("": all train)
  o.lamb = ml_collections.ConfigDict()
  o.lamb.bias_correction = True
  o.lamb.trust_clip = ml_collections.config_dict.placeholder(tuple)  # (lo, hi) or None
  o.coat_adamw = ml_collections.ConfigDict()  # AdamW with FP8 moments (optim/coat.py)
  o.coat_adamw.group_size = 128
  o.coat_adamw.m_format = "e4m3"  # e4m3 | e5m2
  o.coat_adamw.v_format = "e4m3"
  o.coat_adamw.expand = True  # COAT's dynamic range expansion (False: per-group absmax)
  o.coat_adamw.min_size = 4096  # smaller leaves keep fp32 moments
  o.sso = ml_collections.ConfigDict()
  o.sso.inner = "adamw"  # the optax optimizer taking the m cheap steps
  o.sso.m = 4  # inner steps per expensive target-space gradient
  o.sso.eta = 1.0  # per-token target-space step on the logits; softmax CE is 1/2-smooth, so <= 2
  o.sso.eta_schedule = "constant"  # constant | inv_sqrt
  o.sgld = ml_collections.ConfigDict()
  o.sgld.num_data = ml_collections.config_dict.placeholder(int)  # N; required for sgld
  o.sgld.temperature = 1.0
  o.sgld.preconditioner = ml_collections.config_dict.placeholder(str)  # None | rmsprop
  o.sgld.seed = 0
  o.sgld.prior_std = ml_collections.config_dict.placeholder(float)  # None: flat prior
  return o


def mesh_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.data = -1
  m.fsdp = 1
  m.tensor = 1
  m.rules = ml_collections.config_dict.placeholder(tuple)  # None: core.sharding defaults
  return m


def asr_data_config() -> ml_collections.ConfigDict:
  """The ``data`` section of the speech recognition task (train/tasks/asr.py): the speech
  corpus' section (data/defaults.py) set to the quick in-memory ``tone_words`` corpus; set
  ``data.name=synthetic_speech`` for the espeak-ng corpus (its SentencePiece tokenizer)."""
  d = data_defaults.speech_config()
  d.name = "tone_words"
  d.num_train, d.num_eval, d.num_buckets = 1000, 64, 4
  d.max_duration = 40.0
  d.bucket_batch_sizes = ml_collections.config_dict.placeholder(str)  # OOMptimizer JSON
  d.data_dir = ml_collections.config_dict.placeholder(str)  # synthetic_speech: TFDS data_dir
  d.max_files = ml_collections.config_dict.placeholder(int)  # synthetic_speech: sentence files
  d.tokenizer = "byte"        # tone_words only (synthetic_speech brings its SentencePiece)
  d.max_words = 6             # tone_words only: words per utterance at most
  d.tps_outlier_z = 4.0
  return d


def asr_config(enc_layers: int, dec_layers: int, **model) -> ml_collections.ConfigDict:
  """An ASR config (task ``asr``, an ``encdec`` model) with ``enc_layers``/``dec_layers``."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "asr"
  c.model = {"name": "encdec", **model_configs.EncDecConfig(
      enc_layers=enc_layers, dec_layers=dec_layers, **model).to_dict()}
  c.data = asr_data_config()
  c.train = train_config()
  c.optim = optim_config()
  c.mesh = mesh_config()
  return c


def base_config(size: str = "tiny") -> ml_collections.ConfigDict:
  """A language-model config (task ``lm``, a ``transformer`` of preset ``size``)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "lm"
  c.model = {"name": "transformer", **model_configs.preset(size).to_dict()}

  # name: "python_stdlib" (the bundled corpus) or any locally prepared TFDS text dataset;
  # tokenizer: "byte" | "sentencepiece:PATH" | "hf:PATH/tokenizer.json".
  c.data = data_defaults.text_config()
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default
  c.data.max_files = ml_collections.config_dict.placeholder(int)
  c.data.seq_len = 256

  c.train = train_config()
  c.optim = optim_config()
  c.mesh = mesh_config()
  return c


def rl_config(size: str = "tiny") -> ml_collections.ConfigDict:
  """An RL config (``rl/main.py``, AReaL on the arithmetic task): ``seed``, ``model`` (used
  when ``rl.init_export`` is None), ``optim`` and the ``rl`` section."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = {"name": "transformer", **model_configs.preset(size).to_dict()}
  c.optim = optim_config()
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  r = c.rl = ml_collections.ConfigDict()
  r.init_export = ml_collections.config_dict.placeholder(str)  # None: random init of c.model
  r.tokenizer = "byte"  # used without init_export (an export names its own)
  r.task_file = ml_collections.config_dict.placeholder(str)  # None: generated problems
  r.train_problems = 256
  r.eval_problems = 128
  r.problem_seed = 0
  r.eval_seed = 1
  r.eval_samples = 4
  r.ops = "+"
  r.min_digits = 1
  r.max_digits = 2
  r.versions = 20
  r.prompts_per_batch = 4
  r.samples_per_prompt = 4
  r.eta = 0
  r.minibatches = 2
  r.loss = "decoupled"  # decoupled | naive
  r.clip_eps = 0.2
  r.behav_weight_cap = 5.0  # <= 0: no cap
  r.temperature = 1.0
  r.max_new_tokens = 12
  r.num_slots = 8
  r.token_budget = 128
  r.micro_batches = 4
  r.rollout_devices = 0  # 0: half of the local devices (at least 1)
  r.train_devices = 0  # 0: the rest
  r.train_delay_steps = 0
  r.prefill_cost = 0.0
  r.interruptible = True
  r.reward_workers = 0
  r.log_every = 1
  r.eval_every = 10
  r.checkpoint_every = 5
  r.keep_checkpoints = 3
  r.export = True
  return c


# What every key means (``python train/main.py --config FILE --config_help`` prints these next
# to the values; tests/train/test_cli.py fails if a config has a key without one).
KEY_DOCS = {
    "seed": "seed of the parameter init, the data order and the step rng",
    "task": "what the loop trains: lm | classify | asr (train/tasks/)",
    # model
    "model.name": "model by name: transformer | convnet | lora | encdec (models/registry.py)",
    "model.vocab_size": "embedding rows (>= the tokenizer's vocabulary; padded ids never sampled)",
    "model.d_model": "width of the residual stream",
    "model.n_layers": "decoder blocks",
    "model.n_heads": "query heads",
    "model.n_kv_heads": "key/value heads (grouped-query attention; divides n_heads)",
    "model.head_dim": "width of one attention head (even: RoPE)",
    "model.mlp_dim": "hidden width of the SwiGLU MLP",
    "model.rope_theta": "RoPE base frequency",
    "model.norm_eps": "RMSNorm epsilon",
    "model.tie_embeddings": "the output projection reuses the embedding",
    "model.dtype": "compute dtype of activations and matmul inputs (float32 | bfloat16)",
    "model.param_dtype": "dtype the parameters are stored and updated in",
    "model.remat": "rematerialize each block in the backward pass (memory for FLOPs)",
    "model.ctc_weight": ("encdec: weight w of a CTC loss on the encoder (trains (1-w) CE + w CTC; "
                         "0 = the attention decoder alone)"),
    "model.fp8_activations": "COAT: keep activations for the backward pass in FP8 E4M3 "
                             "(linear inputs per-tensor, norm/SwiGLU inputs per 1x16 group)",
    "model.attention_block": "0: dense attention; > 0: blockwise (FlashAttention-style) "
                             "attention with this block size, no [T, T] scores in memory",
    "model.image_size": "input images are image_size x image_size",
    "model.in_channels": "input image channels",
    "model.num_classes": "classifier outputs",
    "model.channels": "output channels of each 3x3 conv block (each halves the image)",
    "model.hidden": "width of the classifier's hidden layer",
    "model.peft": "lora model: lora | ia3 (models/lora.py)",
    "model.lora_rank": "lora model: rank r of A [in, r] and B [r, out]",
    "model.lora_alpha": "lora model: the update is (lora_alpha / lora_rank) A B",
    "model.peft_targets": "lora model: weights that get a PEFT part (q_proj, v_proj, ..., "
                          "embed, lm_head)",
    "model.enc_layers": "encdec: Conformer encoder blocks",
    "model.dec_layers": "encdec: Transformer decoder blocks (self-attn, cross-attn, SwiGLU)",
    "model.conv_kernel": "encdec: depthwise conv width of the Conformer conv module (odd)",
    "model.subsampling_channels": "encdec: channels of the three stride-2 subsampling convs",
    "model.n_mels": "encdec: log-mel bins of the model's front end (divisible by 8)",
    "model.sample_rate": "encdec: audio sample rate in Hz the front end expects",
    "model.bos_id": "encdec: decoder start token (the tokenizer's BOS)",
    "model.eos_id": "encdec: end-of-transcript token (the tokenizer's EOS)",
    "model.pad_id": "encdec: padding token (the tokenizer's pad)",
    # data
    "data.name": "dataset: python_stdlib (bundled) or a locally prepared TFDS text dataset; "
                 "digits for the classify task, tone_words or synthetic_speech for asr",
    "data.text_key": "the text feature of a TFDS dataset",
    "data.tokenizer": "byte | sentencepiece:PATH | hf:PATH/tokenizer.json",
    "data.data_dir": "TFDS data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    "data.train_split": "split to train on",
    "data.eval_split": "split to evaluate on",
    "data.max_files": "python_stdlib / synthetic_speech: use a deterministic subset of this "
                      "many stdlib files",
    "data.validation_permille": "python_stdlib only: files per 1000 held out for validation",
    "data.seq_len": "tokens per packed row",
    "data.num_train": "asr: training utterances (tone_words: synthesized in memory; "
                      "synthetic_speech: built once)",
    "data.num_eval": "asr: utterances of each evaluation split",
    "data.corpus_seed": "asr: seed of the synthesized corpus",
    "data.tokenizer_vocab": "synthetic_speech: SentencePiece vocabulary fit on its transcripts",
    "data.strict": "asr: an utterance outside every bucket is an error (False: dropped and "
                   "counted)",
    "data.max_words": "asr/tone_words: words per utterance at most",
    "data.num_buckets": "asr: duration buckets (lhotse's 1D bins on the training split)",
    "data.num_subbuckets": "asr: output-token sub-buckets per duration bucket (2D bins; 1: 1D)",
    "data.tps_outlier_z": "asr: drop utterances whose tokens/second z-score exceeds this",
    "data.max_duration": "asr: seconds of padded audio per batch per process, when "
                         "data.bucket_batch_sizes is not set",
    "data.bucket_batch_sizes": "asr: global batch size per bucket: the OOMptimizer's JSON "
                               "(python -m train.oomptimizer) or a JSON list",
    # train
    "train.steps": "optimizer steps of the whole run (a rerun resumes until it reaches them)",
    "train.global_batch_size": "examples (rows) per step over all devices and hosts",
    "train.microbatches": "gradient accumulation: the global batch is split into this many",
    "train.log_every": "console line and metrics.jsonl row every this many steps",
    "train.eval_every": "evaluate every this many steps (and at the end)",
    "train.eval_batches": "batches per evaluation (-1: the whole eval split)",
    "train.checkpoint_every": "save a checkpoint every this many steps (and at the end)",
    "train.keep_checkpoints": "newest checkpoints kept on disk",
    "train.async_checkpoint": "write checkpoints in the background",
    "train.restore_step": "resume from this checkpoint once (newer ones are moved aside, not "
                          "deleted); None: the latest",
    "train.export": "write the params-only export to WORKDIR/export at the end",
    "train.export_dtype": "dtype of the exported params (float32 | bfloat16)",
    "train.profile_start": "first step of the jax.profiler trace",
    "train.profile_steps": "steps to trace into WORKDIR/profile (0: no trace)",
    "train.snapshot_start": "first step whose params may be kept as a snapshot (burn-in)",
    "train.snapshot_every": "keep the params every this many steps from snapshot_start on, as "
                            "exports in WORKDIR/samples/ (SGLD samples, ensembles); 0: off",
    # optim
    "optim.name": "adamw | coat_adamw | lamb | sgd | sso | sgld (optim/registry.py)",
    "optim.lr": "peak learning rate",
    "optim.schedule": "cosine | poly | constant, after a linear warmup",
    "optim.warmup_steps": "linear warmup from 0 to lr (must be < train.steps)",
    "optim.end_lr_ratio": "final lr as a fraction of the peak (cosine, poly)",
    "optim.power": "exponent of the poly schedule",
    "optim.b1": "first-moment decay (Adam, LAMB)",
    "optim.b2": "second-moment decay (Adam, LAMB)",
    "optim.eps": "denominator epsilon (Adam, LAMB)",
    "optim.weight_decay": "decoupled weight decay",
    "optim.grad_clip": "global-norm gradient clipping (0 disables)",
    "optim.trainable": "regex over parameter paths (layers/0/attn/q_proj/kernel); the others "
                       "are frozen ('': all train; '^peft/' for model.name=lora)",
    "optim.lamb.bias_correction": "LAMB: Adam-style bias correction of the moments",
    "optim.lamb.trust_clip": "LAMB: clip the trust ratio to (lo, hi), or None",
    "optim.coat_adamw.group_size": "COAT: elements per FP8 group along a leaf's last axis",
    "optim.coat_adamw.m_format": "COAT: FP8 format of the first moment (e4m3 | e5m2)",
    "optim.coat_adamw.v_format": "COAT: FP8 format of the second moment (e4m3 | e5m2)",
    "optim.coat_adamw.expand": "COAT: dynamic range expansion x -> sign(x)|x|^k per group",
    "optim.coat_adamw.min_size": "COAT: leaves with fewer elements keep fp32 moments",
    "optim.sso.inner": "SSO: the optax optimizer taking the cheap surrogate steps",
    "optim.sso.m": "SSO: cheap steps per expensive target-space gradient",
    "optim.sso.eta": "SSO: per-example target-space step (softmax CE is 1/2-smooth: <= 2)",
    "optim.sso.eta_schedule": "SSO: constant | inv_sqrt",
    "optim.sgld.num_data": "SGLD: N, the training examples (tokens for an LM); the mean "
                           "gradient is scaled by N to match the Langevin noise",
    "optim.sgld.temperature": "SGLD: T (1 samples the posterior, 0 is gradient descent)",
    "optim.sgld.preconditioner": "SGLD: None, or rmsprop (pSGLD)",
    "optim.sgld.seed": "SGLD: seed of the Langevin noise (kept in the optimizer state)",
    "optim.sgld.prior_std": "SGLD: std of a Gaussian prior on every parameter (None: flat)",
    # mesh
    "mesh.data": "data-parallel mesh axis size (-1: the remaining devices)",
    "mesh.fsdp": "FSDP axis size: params and optimizer state sharded, batch split too",
    "mesh.tensor": "tensor-parallel axis size: heads and MLP columns split",
    "mesh.rules": "logical axis -> mesh axes rules (None: core.sharding.DEFAULT_RULES)",
    # rl (rl/main.py)
    "rl.init_export": "start from this export (e.g. an SFT model); None: random init of model",
    "rl.tokenizer": "tokenizer without init_export: byte | sentencepiece:PATH | hf:PATH",
    "rl.task_file": "training problems, one 'A + B = C' per line; None: generated ones",
    "rl.train_problems": "generated training problems (without task_file)",
    "rl.eval_problems": "held-out problems for greedy exact-match accuracy (train ones removed)",
    "rl.eval_samples": "samples per held-out problem for the accuracy at the rollout "
                       "temperature (0: greedy accuracy only)",
    "rl.problem_seed": "seed of the generated training problems",
    "rl.eval_seed": "seed of the held-out problems",
    "rl.ops": "operators of generated problems: + | * | +*",
    "rl.min_digits": "fewest digits of a generated operand",
    "rl.max_digits": "most digits of a generated operand",
    "rl.versions": "policy versions to train (one batch each)",
    "rl.prompts_per_batch": "prompts per training batch (batch = prompts x samples)",
    "rl.samples_per_prompt": "answers per prompt, the group of group-normalized advantages",
    "rl.eta": "AReaL staleness bound (Eq. 3); 0 is synchronous RL",
    "rl.minibatches": "PPO updates per version, each on 1/minibatches of the batch",
    "rl.loss": "decoupled (AReaL Eq. 5) | naive (PPO anchored at the behaviour policy)",
    "rl.clip_eps": "PPO clip half-width",
    "rl.behav_weight_cap": "cap of pi_prox/pi_behav in the decoupled loss (<= 0: none)",
    "rl.temperature": "rollout sampling temperature (the trainer scores with the same)",
    "rl.max_new_tokens": "longest completion",
    "rl.num_slots": "sequences the rollout engine decodes together (continuous batching)",
    "rl.token_budget": "tokens per packed micro-batch row (AReaL Algorithm 1)",
    "rl.micro_batches": "the most packed rows per minibatch (a multiple of the train devices); "
                        "a minibatch uses the rows Algorithm 1 needs, rounded up to that "
                        "multiple",
    "rl.rollout_devices": "local devices of the rollout mesh, the rest train (0: half)",
    "rl.train_devices": "local devices of the training mesh, after the rollout ones (0: the "
                        "rest)",
    "rl.train_delay_steps": "simulated training time: clock units (decode steps) between "
                            "taking a batch and publishing its version",
    "rl.prefill_cost": "simulated time of one prefill call (a new prompt, or an interruption's "
                       "batched re-prefill), in clock units (decode steps)",
    "rl.interruptible": "update weights mid-generation (AReaL) instead of waiting for the "
                        "in-flight sequences to finish",
    "rl.reward_workers": "reward threads (0: inline, deterministic)",
    "rl.log_every": "progress line every this many versions",
    "rl.eval_every": "held-out accuracy every this many versions (and at start and end)",
    "rl.checkpoint_every": "checkpoint every this many versions (and at the end)",
    "rl.keep_checkpoints": "newest checkpoints kept",
    "rl.export": "write the params-only export to WORKDIR/export at the end",
}


def privacy_config() -> ml_collections.ConfigDict:
  """A gradient-inversion audit (``python -m privacy.main``, :mod:`privacy`): the victim, the
  client's batch and defense, the attacks and (for images) the generative prior."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.modality = "images"  # images (digits, GIFD and baselines) | text (notes, ReCIT on LoRA)
  c.attacks = ("dlg", "ig", "latent", "gifd")  # privacy.attacks names
  c.batch_size = 1  # the client's private batch
  c.trials = 2  # private batches attacked (results are their means)
  c.defense = "none"  # none | noise | clip | topk | prune | dpsgd (privacy/defenses.py)
  c.defenses = ml_collections.ConfigDict()  # each defense's settings (GIFD's defaults)
  c.defenses.noise = {"std": 0.01}
  c.defenses.clip = {"max_norm": 4.0}
  c.defenses.topk = {"keep": 0.2}
  c.defenses.prune = {"fraction": 0.1}
  c.defenses.dpsgd = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0}
  c.private_classes = ml_collections.config_dict.placeholder(tuple)  # None: all digits
  c.prior = ml_collections.ConfigDict()  # the DCGAN prior (privacy/prior.py)
  c.prior.steps = 3000
  c.prior.batch_size = 64
  c.prior.classes = ml_collections.config_dict.placeholder(tuple)  # None: all digits
  c.victim = ml_collections.ConfigDict()  # the convnet victim (privacy/image_victim.py)
  c.victim.steps = 300
  c.attack = ml_collections.ConfigDict()  # privacy/attacks/image.py meta
  c.attack.steps = 1000  # IG's Adam steps
  c.attack.dlg_steps = 300  # DLG's L-BFGS steps
  c.attack.stage_steps = 300  # latent / GIFD steps per stage
  c.attack.restarts = 2
  c.attack.radii = (0.05, 0.05)  # GIFD's l1 radius per feature stage, per feature entry
  c.attack.lr = 0.1
  c.attack.tv = 0.01  # IG's total-variation weight
  c.text = ml_collections.ConfigDict()  # modality "text": ReCIT on LoRA (privacy/recit.py)
  c.text.lora_rank = 8
  c.text.peft_targets = ("q_proj", "v_proj", "embed")
  c.text.malicious = True  # the attacker's pre-fine-tuning on personal notes
  c.text.pretrain_steps = 300
  c.text.top_k = 8  # ReCIT: proposals per position
  c.text.sweeps = 1  # ReCIT: coordinate-descent sweeps
  c.text.coverage = 0.3  # ReCIT: score bonus for a filtered token no note has placed yet
  c.text.relax_steps = 150  # the relaxation attack's Adam steps
  return c
