"""The toy build: it loads through the real preset's functions, its transcoders reconstruct
unseen activations, and a build is reused, forced, reproducible and never half-visible.

One small build (seconds) into the session's LANGSAE_TOY_DIR (conftest's `small_toy`) serves every test.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from langsae import toy
from langsae.config import PRESETS, TOY_ROOT
from langsae.data import PAPER_LANGUAGES, load_texts
from langsae.model import load_model, load_sae

SMALL = toy.SCALES["small"]


def _weights(root: Path) -> dict[str, bytes]:
    """The bytes of every weight file, by name (the hub snapshot folder is named after the weights)."""
    files = [*(root / "model").glob("*.safetensors"), *(root / "hub").rglob("layer_*.safetensors")]
    return {f"{p.relative_to(root).parts[0]}/{p.name}": p.read_bytes() for p in files}


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and content of every file of a build."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


def _mlp_io(model, tokenizer, texts: list[str], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP input and output [N, d] of every token, hooked directly on the HF module (independent of
    langsae.forward)."""
    seen: dict[str, list] = {"x": [], "y": []}

    def hook(mod, args, out):
        seen["x"].append(args[0][0])
        seen["y"].append(out[0])

    handle = model.model.layers[layer].mlp.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for text in texts:  # one text at a time: no padding to mask
                model(**tokenizer(text, return_tensors="pt"))
    finally:
        handle.remove()
    return torch.cat(seen["x"]), torch.cat(seen["y"])


def _fve(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return 1.0 - ((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()


def test_loads_through_the_real_preset_functions(small_toy):
    preset = PRESETS["toy"]
    assert Path(preset.model_id) == small_toy / "model" and preset.sae_hub_cache == small_toy / "hub"
    model, tokenizer = load_model(preset, "cpu", torch.float32)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert (
        model.config.num_hidden_layers == SMALL.num_layers and model.config.hidden_size == SMALL.hidden_size
    )
    # Qwen3's conventions: no BOS, pad <|endoftext|>, eos <|im_end|>.
    assert tokenizer.bos_token_id is None
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", "<|im_end|>")
    first = tokenizer("Hello world")["input_ids"][0]
    assert first not in tokenizer.all_special_ids
    for L in range(SMALL.num_layers):
        sae = load_sae(preset, L, "cpu", torch.float32)
        assert type(sae).__name__ == "Transcoder"
        assert sae.cfg.metadata.hook_name == f"blocks.{L}.mlp.hook_in"
        assert sae.cfg.metadata.hook_name_out == f"blocks.{L}.hook_mlp_out"
        assert tuple(sae.W_enc.shape) == (SMALL.hidden_size, SMALL.tc_expansion * SMALL.hidden_size)


def test_transcoders_reconstruct_unseen_activations(small_toy):
    preset = PRESETS["toy"]
    model, tokenizer = load_model(preset, "cpu", torch.float32)
    texts = load_texts(PAPER_LANGUAGES, "selection", 3).flat()[0]  # FLORES: never trained on
    for L in range(SMALL.num_layers):
        sae = load_sae(preset, L, "cpu", torch.float32)
        x, y = _mlp_io(model, tokenizer, texts, L)
        with torch.no_grad():
            acts = sae.encode(x)
            fve = _fve(y, sae.decode(acts))
            shuffled = _fve(
                y, sae.decode(acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))])
            )
        l0 = (acts > 0).float().sum(-1).mean().item()
        assert fve > 0.8, f"layer {L}: FVE {fve:.3f}"
        assert shuffled < 0.1 and fve > shuffled + 0.7, f"layer {L}: FVE {fve:.3f}, shuffled {shuffled:.3f}"
        assert 0 < l0 < acts.shape[1] / 4, f"layer {L}: L0 {l0:.1f} of {acts.shape[1]}"


def test_quality_report(small_toy):
    q = json.loads((small_toy / "quality.json").read_text())
    ce = q["cross_entropy"]
    assert list(ce) == list(PAPER_LANGUAGES)
    assert all(row["predicted_tokens"] > 0 for row in ce.values())
    # Even the small model has learnt more than token frequencies, in every language.
    assert all(row["model"] < row["unigram"] - 0.2 for row in ce.values()), ce
    assert set(q["transcoders"]) == {str(L) for L in range(SMALL.num_layers)}
    assert all(row["fve"] > 0.8 and 0 <= row["dead_fraction"] < 0.5 for row in q["transcoders"].values())


def test_second_call_reuses_the_build(small_toy):
    before = _snapshot(small_toy)
    start = time.perf_counter()
    assert toy.build_toy(TOY_ROOT, seed=0, scale="small") == small_toy
    assert toy.ensure_built() == TOY_ROOT
    assert time.perf_counter() - start < 3
    assert _snapshot(small_toy) == before


def test_stale_or_incomplete_builds_are_not_reused(small_toy, tmp_path):
    copy = tmp_path / "toy"
    shutil.copytree(small_toy, copy)
    assert toy.current_build(copy) is not None
    record = json.loads((copy / "build.json").read_text())
    record["versions"]["torch"] = "0.0"
    (copy / "build.json").write_text(json.dumps(record))
    assert toy.current_build(copy) is None
    (copy / "build.json").unlink()  # a killed build: everything but the build.json
    assert toy.current_build(copy) is None


def test_a_failed_build_leaves_the_old_one_intact(small_toy, tmp_path, monkeypatch):
    copy = tmp_path / "toy"
    shutil.copytree(small_toy, copy)
    before = _snapshot(copy)

    def killed(out, seed, scale):
        (out / "model").mkdir()
        (out / "model" / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(toy.build, "_train_in_pinned_process", killed)  # where build_toy looks it up
    with pytest.raises(KeyboardInterrupt):
        toy.build_toy(copy, seed=0, scale="small", force=True)
    assert _snapshot(copy) == before
    assert not list(copy.glob(".building-*"))


def test_force_rebuilds_the_same_weights_and_another_seed_differs(small_toy, tmp_path):
    before = _weights(small_toy)
    assert len(before) == 1 + SMALL.num_layers
    build_time = (small_toy / "build.json").stat().st_mtime_ns
    toy.build_toy(TOY_ROOT, seed=0, scale="small", force=True)
    assert (small_toy / "build.json").stat().st_mtime_ns != build_time
    assert _weights(small_toy) == before

    other = toy.build_toy(tmp_path / "toy", seed=1, scale="small")
    weights = _weights(other)
    assert weights.keys() == before.keys()
    assert all(weights[k] != before[k] for k in before)
    assert toy.current_build(other)["seed"] == 1  # reusable as it is, though not the default seed


def test_small_build_matches_its_vendors_committed_fingerprint(small_toy):
    """The build is pinned to reproduce bit for bit on every x86-64 machine with AVX2 of one CPU
    vendor: whatever machine runs the tests, its small build must equal the one recorded for its vendor."""
    vendor = toy.cpu_vendor()
    expected = toy.committed_fingerprint("small", vendor)
    if expected is None:
        pytest.skip(
            f"no small-build fingerprint is committed for {vendor}; the tolerance test below still runs"
        )
    actual = toy.fingerprint(small_toy)
    assert toy.first_difference(actual, expected) is None
    assert actual == {k: expected[k] for k in actual}


def test_small_build_agrees_with_every_vendors_build_within_rounding(small_toy):
    """Across vendors the builds differ only by rounding: the same files (the hub snapshot folder is
    named by content), and a model CE per language within 1e-4 nats of each committed build
    (1.2e-5 between the Intel and the AMD build of the recipe before task lines). Every vendor whose
    fingerprint of the current recipe is committed: after a recipe change, those re-recorded so far."""
    known = toy.committed_fingerprints("small")
    assert known, "no small-build fingerprint of the current recipe is committed"
    actual = toy.fingerprint(small_toy)
    for entry in known.values():
        assert sorted(Path(n).name for n in actual["sha256"]) == sorted(Path(n).name for n in entry["sha256"])
        assert toy.max_ce_difference(actual, entry) < 1e-4


def test_first_difference_names_the_earliest_artifact_in_build_order():
    fp = {
        "sha256": {
            "model/tokenizer.json": "a",
            "model/model.safetensors": "b",
            "hub/x/layer_0.safetensors": "c",
        },
        "quality": {"ce": 1.0},
    }
    changed = {
        "sha256": {**fp["sha256"], "hub/x/layer_0.safetensors": "z", "model/model.safetensors": "y"},
        "quality": fp["quality"],
    }
    assert toy.first_difference(fp, fp) is None
    assert toy.first_difference(changed, fp) == "model/model.safetensors"
    assert toy.first_difference({**fp, "quality": {"ce": 2.0}}, fp) == "quality.json"
    missing = {"sha256": {k: v for k, v in fp["sha256"].items() if "hub" not in k}, "quality": fp["quality"]}
    assert toy.first_difference(missing, fp) == "hub/x/layer_0.safetensors"


def test_the_build_process_runs_with_pinned_kernels_and_threads():
    env = toy.build_environment(toy.SCALES["full"])
    assert {k: env[k] for k in toy.PINNED_KERNELS} == toy.PINNED_KERNELS
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert toy.build_environment(toy.SCALES["small"])["OMP_NUM_THREADS"] == "1"


def test_training_loss_equals_the_models_own_labels_loss(small_toy):
    """next_token_loss skips the LM head on padding; its value must be the model's `labels=` loss."""
    from langsae.forward import make_batches

    model, tokenizer = load_model(PRESETS["toy"], "cpu", torch.float32)
    ids = [tokenizer(t)["input_ids"] for t in load_texts(PAPER_LANGUAGES, "selection", 1).flat()[0]]
    batch = make_batches(ids, len(ids), tokenizer.pad_token_id)[0]
    assert (batch.attention_mask == 0).any(), "the batch must hold padding for the test to mean something"
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        torch.testing.assert_close(toy.next_token_loss(model, batch), expected, rtol=1e-6, atol=1e-6)


def test_command_line_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        toy.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--force", "--seed", "--scale", "--root", "--verify", "--write-fingerprint"):
        assert flag in out


def test_unknown_scale_is_a_user_error(tmp_path):
    from langsae.errors import UserError

    with pytest.raises(UserError, match="small"):
        toy.build_toy(tmp_path / "toy", scale="huge")


def test_the_presets_do_not_import_the_toys_training_code():
    """config names the toy's prepare hook by a string and takes TOY_ROOT from langsae.toy_paths, so
    importing it (every stage does) loads none of the toy package; the hook still resolves when called."""
    import subprocess
    import sys

    code = "import sys, langsae.config; print(sorted(m for m in sys.modules if m.startswith('langsae.toy')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['langsae.toy_paths']"
    import pkgutil

    assert pkgutil.resolve_name(PRESETS["toy"].prepare) is toy.ensure_built


def test_python_dash_m_langsae_toy_still_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "langsae.toy", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "--write-fingerprint" in done.stdout
