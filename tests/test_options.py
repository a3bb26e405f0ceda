"""Settings dataclasses carry their options: checked once, and the CLI flags are made from the same fields."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from analyses.cli import WRITTEN_MAPS_ONLY, build_parser, option_name, settings_from_args
from analyses.selectivity import SelectivitySettings
from analyses.stimuli import StimulusOptions
from interpret.attribution import Settings
from interpret.routing import RoutingSettings
from model.errors import OptionError
from model.options import check_settings, setting

from .conftest import tbe


@dataclasses.dataclass(frozen=True)
class Example:
    count: int = setting(3, "how many", minimum=1)
    level: float = setting(0.5, "a level", minimum=0, maximum=1)
    kind: str = setting("a", "which", choices=("a", "b"))
    width: int | None = setting(None, "optional", minimum=2, kind=int)
    free: str = "anything"  # no metadata: not checked


@pytest.mark.parametrize("change, parameter, problem", [
    ({"count": 0}, "count", "must be at least 1, got 0"),
    ({"level": 1.0}, "level", "must be between 0 and 1, got 1.0"),
    ({"level": 0}, "level", "must be between 0 and 1, got 0"),
    ({"kind": "c"}, "kind", "unknown kind 'c'; choose from a, b"),
    ({"width": 1}, "width", "must be at least 2, got 1"),
])
def test_a_setting_out_of_range_names_its_parameter(change, parameter, problem):
    """The library names the parameter; the CLI names its flag (test_bad_selectivity_settings_...)."""
    check_settings(Example(width=None, free="x"))
    check_settings(Example(width=2))
    with pytest.raises(OptionError) as err:
        check_settings(Example(**change))
    assert (err.value.parameter, err.value.problem) == (parameter, problem)
    assert option_name("n_steps") == "--n-steps"


@pytest.mark.parametrize("command, settings_class, values", [
    ("interpret", Settings, {"n_steps": 7, "internal_batch_size": 3, "baseline": "blur", "shap_samples": 5,
                             "nt_samples": 2, "nt_stdev": 0.25, "occlusion_window": 14, "occlusion_stride": 7,
                             "attention_heads": "each"}),
    ("check-maps", Settings, {"n_steps": 9, "baseline": "grey"}),
    ("selectivity", SelectivitySettings, {"n_permutations": 99, "n_bootstrap": 50, "alpha": 0.1,
                                          "alternative": "two-sided", "confidence": 0.9}),
    ("routing", RoutingSettings, {"n_permutations": 99, "n_bootstrap": 50, "alpha": 0.1, "confidence": 0.9,
                                  "min_location": 0.1, "min_content": 0.02}),
])
def test_every_setting_is_a_flag_of_its_command(command, settings_class, values):
    """No field without a flag, no flag default other than the field's: the two cannot drift apart.

    The exception: what only says which maps are written (``attention_heads``) is not an option of
    ``tbe check-maps``, which writes none; it keeps its default there.
    """
    required = ["--run", "r", "--out", "o"]
    defaults = settings_from_args(settings_class, build_parser().parse_args([command, *required]))
    assert defaults == settings_class()
    flags = [x for name, value in values.items() for x in (option_name(name), str(value))]
    parsed = settings_from_args(settings_class, build_parser().parse_args([command, *required, *flags]))
    assert parsed == settings_class(**values)
    left_out = set(WRITTEN_MAPS_ONLY) if command == "check-maps" else set()
    options = set(vars(build_parser().parse_args([command, *required])))
    assert {f.name for f in dataclasses.fields(settings_class)} - left_out <= options and not left_out & options


def test_selectivity_command_builds_its_settings(monkeypatch, tmp_path, capsys):
    import analyses.selectivity

    seen = {}

    def fake_run_selectivity(run_dir, data_dir, out_dir, subj, settings, **kwargs):
        seen.update(settings=settings, **kwargs)
        return pd.DataFrame({"source": ["predicted"], "hemi": ["lh"], "roi": ["FFA-1"], "category": ["face"],
                             "supported": [True], "preferred": [True]})

    monkeypatch.setattr(analyses.selectivity, "run_selectivity", fake_run_selectivity)
    assert tbe("-q", "selectivity", "--run", tmp_path, "--out", tmp_path / "out", "--alpha", "0.01",
               "--n-permutations", "123", "--seed", "4") == 0
    assert seen["settings"] == SelectivitySettings(n_permutations=123, alpha=0.01) and seen["seed"] == 4
    assert seen["stimuli"] == StimulusOptions()
    assert "predicted: lh:FFA-1 face" in capsys.readouterr().out


def test_bad_selectivity_settings_stop_before_anything_is_read_or_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert tbe("-q", "selectivity", "--run", tmp_path / "no-run", "--out", out, "--alpha", "1.5") == 2
    assert capsys.readouterr().err.strip() == "error: --alpha: must be between 0 and 1, got 1.5"
    assert not out.exists()
