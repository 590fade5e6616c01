"""labkit: the helper package of the course on large models.

Modules, in the direction their dependencies point:
    profiles   compute profiles (ci, cpu, gpu, tpu) and a device summary
    data       offline datasets and the checked optional download
    deps       which labkit modules some code imports, transitively, and a digest of their code without docstrings
               (the keys of the book build's and the pretrained model's caches)
    tokenize   text <-> integer ids, one character per id
    bpe        byte-level BPE: training, encoding, GPT-2 files (chapter 4); bpe_train learns the merges
               incrementally, bpe_files reads GPT-2's encoder.json and vocab.bpe
    bigram     the first language model (chapter 1)
    landmarks  published sizes and compute of landmark models (chapter 1)
    nn         dense layers, the MLP, losses (chapter 2)
    masks, positions, attention, blockwise, kvcache
               attention with one ScoreMods value for every score modifier (mask, causality, offset, scale,
               ALiBi, soft-capping), GQA, memory-efficient blockwise attention, positions incl. RoPE (chapter 3)
    gpt_config, gpt, generate, hf_gpt2
               the GPT, its presets, generation with a KV cache, Hugging Face GPT-2 weights (chapter 3)
    tokens     token ids on disk, memory-mapped, and random training windows (chapter 4)
    lm         next-token cross-entropy and perplexity (chapter 4)
    optim      the pretraining recipe: AdamW, warm-up + cosine, clipping, in one TrainConfig (chapter 4)
    step       one jitted training step, with gradient accumulation
    checkpoint atomic orbax checkpoints of model, optimizer and data position; exact resume
    train      the fit loop (chapter 2 onwards; grows pretraining's needs in chapter 4)
    zoo        the chapter-4 GPT pretrained on Python's documentation, trained once and loaded from a cache
    scaling    training compute (6ND + attention) and power-law fits of loss against parameters or compute
    heads, lora, finetune, labeled
               a classifier head on a GPT, LoRA adapters (merge and unmerge), what each fine-tuning regime trains,
               the masked loss of instruction tuning, an offline labeled dataset (chapter 4)
    retrieval  embeddings from a GPT, nearest passages, retrieval-augmented prompts (chapter 5)
    vit        patch embedding, a Vision Transformer on the GPT's blocks, masked-patch pretraining (chapter 5)
    audio      log-mel spectrograms, the stored spoken-digit dataset, a Transformer over spectrogram frames (chapter 5)
    tabular    feature tokens for tables (FT-Transformer) on the GPT's blocks, train-only standardization (chapter 5)
    metrics    sensitivity, specificity, predictive values, ROC AUC and calibration of binary classifiers (chapter 5)
    privacy    canaries, exposure (Carlini et al. 2019), greedy extraction, loss-threshold membership inference (ch. 7)
    parallel   device meshes, sharding rules by parameter path (DP, FSDP, TP, data x model), batch placement (ch. 6)
    distributed  jax.distributed.initialize for SLURM, TPU pods and several local processes (chapter 6)
    memory     per-device bytes of parameters, gradients and Adam state beside XLA's figure; activations kept (ch. 6)
    collectives  the collectives of a compiled step beside their byte formulas; a roofline (chapter 6)
    plot       training curves, confusion matrices, image grids
    book       glue a notebook's numbers and figures into the chapter text
    selfcheck  checks with specific messages for students' code (selfcheck_core, selfcheck_ch02, selfcheck_ch03,
               selfcheck_ch04, selfcheck_lora)
    grading    the sealed comparisons of the assignments' hidden tests
"""

from labkit.profiles import PROFILE_NAMES, Profile, device_summary, get_profile

__version__ = "0.1.0"

__all__ = ["PROFILE_NAMES", "Profile", "device_summary", "get_profile", "__version__"]
