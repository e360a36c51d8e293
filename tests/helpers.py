"""Helpers shared by several test files (a test file imports helpers from here, never from another
test file)."""

import csv

import torch

from langsae import nu
from langsae.cli import run_main
from langsae.data import PAPER_LANGUAGES, load_texts
from langsae.stages import interactions as cross_linguistic_interactions
from langsae.stages import nu as compute_nu_scores

N_TEXTS = 6  # per language; enough to exercise ranking, small enough to be fast


def run_nu(args, out_dir, *extra):
    return run_main(
        compute_nu_scores.main, [*args, "--out-dir", str(out_dir), "--n-texts-per-lang", str(N_TEXTS), *extra]
    )


def load_layer(out_dir, layer):
    files = nu.layer_files(out_dir, layer)
    return {
        k: torch.load(files[k], weights_only=False) for k in ("indices", "values", "mean_acts", "directions")
    }


def brute_force_mu(model_dir, hook, encode, weighting="token"):
    """Per text, batch 1, a hand-written hook on the module itself; per-language means in float64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = load_texts(PAPER_LANGUAGES, "selection", N_TEXTS)
    mus = []
    for lang in PAPER_LANGUAGES:
        per_text = []
        for text in texts.by_language[lang]:
            seen = {}
            handle = hook(model, seen)
            with torch.no_grad():
                model(torch.tensor([tok(text)["input_ids"]]))
            handle.remove()
            acts = encode(seen["x"][0, 1:].double())  # position 0 dropped
            per_text.append(acts)
        if weighting == "token":
            mus.append(torch.cat(per_text).mean(0))
        else:
            mus.append(torch.stack([a.mean(0) for a in per_text]).mean(0))
    return torch.stack(mus)


def transcoder_encode(weights):
    return lambda x: torch.relu(x @ weights["W_enc"].double().T + weights["b_enc"].double())


def mlp_input_hook(layer):
    return lambda model, seen: model.model.layers[layer].mlp.register_forward_pre_hook(
        lambda m, args: seen.__setitem__("x", args[0])
    )


def fails_cleanly(argv, out_dir, capsys) -> str:
    rc = run_main(compute_nu_scores.main, [*argv, "--out-dir", str(out_dir), "--n-texts-per-lang", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    errors = [line for line in err if line.startswith("error: ")]  # progress bars may precede it
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not out_dir.exists() or not any(out_dir.iterdir()), "nothing may be half-written"
    return errors[0]


# The small toy, not the random tiny fixture: the ratio distance needs each language's own ΔCE to
# be positive, which a random model does not give.
LANGS5 = ["eng_Latn", "spa_Latn", "jpn_Jpan", "tha_Thai", "arb_Arab"]


TOY = ["--model", "toy"]


def copy_nu(src, dst):
    """A fresh run folder holding only the nu stage's files (no condition store, no Section 5)."""
    dst.mkdir(parents=True)
    for f in [*src.glob("layer_*"), src / nu.META_FILE]:
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


SHARED = ["--languages", ",".join(LANGS5), "--n-texts", "4", "--random-draws", "2"]
STAGE3 = ["--k", "3", "--stability-boot", "20"]


def stage3(out, *extra):
    return cross_linguistic_interactions.main([*TOY, "--out-dir", str(out), *SHARED, *STAGE3, *extra])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
