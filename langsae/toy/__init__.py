"""The offline model organism: a small Qwen3 trained here, with transcoders in the mwhanna layout.

`build_toy` trains, from one seed, a byte-level BPE tokenizer, a small `Qwen3ForCausalLM` on
NTREX-128 news text of the paper's ten languages, and one ReLU transcoder per layer (MLP
input -> MLP output), and saves them where the `toy` preset looks: the model under
`<root>/model`, the transcoders as an mwhanna-style release in a local Hugging Face cache
under `<root>/hub`. Toy runs then load through exactly the code real runs use. FLORES
(selection and evaluation sets) is never trained on; its evaluation set measures quality.

    python -m langsae.toy [--force] [--seed N] [--scale full|small] [--root DIR]
    python -m langsae.toy --verify [--scale full|small]     # rebuild seed 0, compare with the
                                                            # committed fingerprint

The build is bit-for-bit reproducible on x86-64 machines with AVX2 of one CPU vendor (see
"bit-for-bit across machines" in `langsae.toy.reproduce`); the fingerprints of seed 0 are committed in
toy_fingerprint.json, one set per vendor.

The pieces that write Hugging Face file layouts are also what the tests use to build
their tiny fixtures, so toy runs, test runs and real runs share one loading path.

The package: `build` (the build folder, build.json, reuse, the transcoders' hub files, a build's
identity), `scales` (the hyper-parameters of a build), `train` (tokenizer, model and transcoder
training, the quality report), `task_text` (task training lines and their leak checks), `reproduce`
(the pinned build process, fingerprints and their per-vendor comparison), `cli` (the command line).
Every public name is importable from `langsae.toy`; where the toy lives (`TOY_ROOT`, `TOY_RELEASE`)
is in `langsae.toy_paths`, which the presets import without the training code.
"""

from langsae.toy.build import (
    BUILD_PARTS,
    PARTIAL_PREFIX,
    TOY_FORMAT,
    TOY_MODEL_NAME,
    build_identity,
    build_record,
    build_toy,
    current_build,
    ensure_built,
    hub_repo_dir,
    write_mwhanna_release,
)
from langsae.toy.cli import (
    main,
    record_fingerprint,
    verify,
)
from langsae.toy.reproduce import (
    FINGERPRINT_FILE,
    PINNED_ATEN,
    PINNED_KERNELS,
    _train_in_pinned_process,
    build_environment,
    build_threads,
    committed_fingerprint,
    committed_fingerprints,
    cpu_model,
    cpu_vendor,
    fingerprint,
    first_difference,
    max_ce_difference,
)
from langsae.toy.scales import (
    SCALES,
    ToyScale,
    _scale,
)
from langsae.toy.train import (
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    _build_worker,
    dead_fraction,
    encode,
    fraction_of_variance_explained,
    log_quality,
    measure_quality,
    mixed_batches,
    mlp_activations,
    next_token_loss,
    train_model,
    train_tokenizer,
    train_transcoder,
)
from langsae.toy_paths import (
    TOY_RELEASE,
    TOY_ROOT,
)

__all__ = [
    "BUILD_PARTS",
    "EOS_TOKEN",
    "FINGERPRINT_FILE",
    "PAD_TOKEN",
    "PARTIAL_PREFIX",
    "PINNED_ATEN",
    "PINNED_KERNELS",
    "SCALES",
    "SPECIAL_TOKENS",
    "TOY_FORMAT",
    "TOY_MODEL_NAME",
    "TOY_RELEASE",
    "TOY_ROOT",
    "ToyScale",
    "_build_worker",
    "_scale",
    "_train_in_pinned_process",
    "build_environment",
    "build_identity",
    "build_record",
    "build_threads",
    "build_toy",
    "committed_fingerprint",
    "committed_fingerprints",
    "cpu_model",
    "cpu_vendor",
    "current_build",
    "dead_fraction",
    "encode",
    "ensure_built",
    "fingerprint",
    "first_difference",
    "fraction_of_variance_explained",
    "hub_repo_dir",
    "log_quality",
    "main",
    "max_ce_difference",
    "measure_quality",
    "mixed_batches",
    "mlp_activations",
    "next_token_loss",
    "record_fingerprint",
    "train_model",
    "train_tokenizer",
    "train_transcoder",
    "verify",
    "write_mwhanna_release",
]
