"""labkit: the helper package of the course on large models.

Modules, in the direction their dependencies point:
    profiles   compute profiles (ci, cpu, gpu, tpu) and a device summary
    data       offline datasets and the checked optional download
    tokenize   text <-> integer ids, one character per id
    bpe        byte-level BPE: training, encoding, GPT-2 files (chapter 4)
    bigram     the first language model (chapter 1)
    landmarks  published sizes and compute of landmark models (chapter 1)
    nn         dense layers, the MLP, losses (chapter 2)
    train      the fit loop (chapter 2 onwards)
    plot       training curves, confusion matrices, image grids
    book       glue a notebook's numbers and figures into the chapter text
"""

from labkit.profiles import PROFILE_NAMES, Profile, device_summary, get_profile

__version__ = "0.1.0"

__all__ = ["PROFILE_NAMES", "Profile", "device_summary", "get_profile", "__version__"]
