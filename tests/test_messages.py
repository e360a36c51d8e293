"""Messages that point at the real cause, and --help that shows only what a script reads."""

import contextlib
import io

import pytest

import run_pipeline
from langsae import code_switch, report, tasks
from langsae.cli import run_main
from langsae.config import build_parser, parse_layers, resolve
from langsae.errors import UserError
from langsae.stages import check_data, cluster_synergy, code_switching
from langsae.stages import downstream as downstream_ablation
from langsae.stages import interactions as cross_linguistic_interactions
from langsae.stages import nu as compute_nu_scores
from langsae.stages import plots as plot_sae_features
from langsae.stages import section5 as reproduce_figures_section5
from langsae.stages import steering as steer_language

SCRIPTS = {
    "check_data": check_data.parse_args,
    "nu": compute_nu_scores.parse_args,
    "section5": reproduce_figures_section5.parse_args,
    "interactions": cross_linguistic_interactions.parse_args,
    "cluster_synergy": cluster_synergy.parse_args,
    "downstream": downstream_ablation.parse_args,
    "code_switching": code_switching.parse_args,
    "steering": steer_language.parse_args,
    "plots": plot_sae_features.parse_args,
    "pipeline": run_pipeline.parse_args,
}


def help_text(parse_args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    return out.getvalue()


def one_error_line(main, argv, capsys) -> str:
    assert run_main(main, argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- --layers


def test_a_descending_range_is_named_as_such(tmp_path, capsys):
    with pytest.raises(UserError, match="3-1 runs downwards; write it as 1-3"):
        parse_layers("3-1")
    assert (
        parse_layers("1-3") == (1, 2, 3)
        and parse_layers("5,0-1") == (0, 1, 5)
        and parse_layers("all") is None
    )
    # through a stage: one line about the range, not about ν results to compute
    msg = one_error_line(
        plot_sae_features.main,
        ["--model", "toy", "--layers", "3-1", "--out-dir", str(tmp_path / "o")],
        capsys,
    )
    assert "runs downwards" in msg and "compute_nu_scores" not in msg


def test_no_layer_at_all_is_an_error():
    with pytest.raises(UserError, match="names no layer"):
        parse_layers(",")


def test_plot_names_a_layer_beyond_the_model(small_toy, small_toy_nu, tmp_path, capsys):
    from helpers import copy_nu

    run = copy_nu(small_toy_nu, tmp_path / "run")
    argv = ["--model", "toy", "--out-dir", str(run)]
    for flags, flag in ((["--layer", "9"], "--layer"), (["--layers", "0,9"], "--layers")):
        msg = one_error_line(plot_sae_features.main, [*argv, *flags], capsys)
        assert (
            f"{flag}: layer(s) [9] out of range: the model has 2 layers (0-1)" in msg
            and "compute_nu_scores" not in msg
        )


# ----------------------------------------------------------------------------- hints and defaults


def test_downstream_section5_hint_keeps_the_runs_flags(tmp_path):
    # gemma-2-2b: its downstream layer comes from the Section 5 summary (the Qwen3 presets fix one), and
    # unlike the toy it may run on --split devtest
    argv = [
        "--model",
        "gemma-2-2b",
        "--out-dir",
        str(tmp_path / "elsewhere"),
        "--split",
        "devtest",
        "--dtype",
        "float32",
    ]
    cfg = resolve(downstream_ablation.parse_args(argv))
    with pytest.raises(UserError) as e:
        downstream_ablation.default_layers(cfg, "feature")
    hint = str(e.value).split("run `", 1)[1].split("`", 1)[0]
    assert hint.startswith("python reproduce_figures_section5.py --model gemma-2-2b")
    for flag in (
        f"--out-dir {tmp_path / 'elsewhere'}",
        "--split devtest",
        "--dtype float32",
        "--mode feature",
    ):
        assert flag in hint


def test_toy_downstream_tasks_are_the_offline_ones(monkeypatch):
    def chosen(argv):
        args = downstream_ablation.parse_args(argv)
        return downstream_ablation.chosen_tasks(args, resolve(args))

    assert chosen(["--model", "toy"]) == ["qa", "topic"]
    assert chosen(["--model", "qwen3-0.6b"]) == list(tasks.TASKS)
    assert chosen(["--model", "toy", "--tasks", "sentiment"]) == ["sentiment"]
    # qa and topic data are bundled: they load with the hub out of reach
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tasks.read_xquad("eng_Latn") and tasks.read_sib200("eng_Latn")
    with pytest.raises(tasks.DatasetUnavailable):
        tasks.load_amazon("eng_Latn")


def test_an_empty_probe_file_says_it_has_no_items(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text("\n")
    with pytest.raises(UserError, match=f"{path} has no items"):
        code_switch.probe_languages(path)


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_has_no_empty_defaults(name):
    text = help_text(SCRIPTS[name])
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 0)" in text  # --seed: real defaults still show


def test_help_leaves_out_flags_a_script_ignores():
    plots, data = help_text(plot_sae_features.parse_args), help_text(check_data.parse_args)
    for flag in ("--device", "--dtype", "--batch-size", "--n-texts-per-lang", "--force"):
        assert flag not in plots and flag not in data
    assert "--layers" not in data and "--layers" in plots
    assert "--device" in help_text(compute_nu_scores.parse_args)
    # still accepted: run_pipeline.py passes every stage the same common flags
    args = plot_sae_features.parse_args(
        ["--device", "cpu", "--dtype", "float32", "--batch-size", "3", "--force"]
    )
    assert args.device == "cpu" and args.batch_size == 3 and args.force
    with pytest.raises(ValueError, match="--no-such"):
        build_parser("x", ignored=("--no-such",))


def test_help_of_the_report_module(capsys):
    with pytest.raises(SystemExit):
        report.main(["--help"])
    text = capsys.readouterr().out
    assert "--readme" in text and "--device" not in text and "(default: None)" not in text


@pytest.mark.parametrize(
    "name, says", [("downstream", "the most common held-out peak"), ("steering", "steering layer (toy 1)")]
)
def test_help_states_the_real_layers_default(name, says):
    entry = help_text(SCRIPTS[name]).split("\n  --layers LAYERS", 1)[1].split("\n  --", 1)[0]
    layers_help = " ".join(entry.split())
    assert says in layers_help and "every layer" not in layers_help
