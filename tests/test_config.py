import json

import pytest

from delrec_lib.config import DataConfig, RunConfig, load_config, override, preset_config
from delrec_lib.errors import ConfigError


def test_every_preset_resolves():
    for name in ("smoke", "cpu", "cpu-ablations", "paper"):
        assert preset_config(name).preset == name


def test_file_then_keyword_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "smoke"\ndata_dir = "elsewhere"\n[data]\nseed = 5\n')
    config = load_config(None, f, data={"num_negatives": 9, "seed": None})
    assert config.preset == "smoke" and config.data_dir == "elsewhere"
    assert config.data == DataConfig(seed=5, num_negatives=9)


def test_json_config(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"data": {"dataset": "toy"}}))
    assert load_config("cpu", f).data.dataset == "toy"


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"data": {"sed": 1}}, r"data: unknown field 'sed' for DataConfig"),
        ({"data": {"seed": "one"}}, r"data\.seed: expected an integer, got 'one'"),
        ({"nonsense": 1}, r"unknown field 'nonsense' for RunConfig"),
        ({"max_users": 2.5}, r"max_users: expected an integer"),
    ],
)
def test_bad_overrides_are_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        override(RunConfig(), overrides)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("cpu", tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("data = [")
    with pytest.raises(ConfigError, match="bad.toml: cannot be parsed"):
        load_config("cpu", bad)
    other = tmp_path / "other.toml"
    other.write_text('preset = "paper"\n')
    with pytest.raises(ConfigError, match="disagrees with the requested preset 'cpu'"):
        load_config("cpu", other)


def test_ablation_presets_distil_every_prompt_their_variants_need():
    for name in ("cpu-ablations", "paper"):
        config = preset_config(name)
        assert {"sasrec-ta", "sasrec-rps", "gru4rec", "caser"} <= set(config.distill.prompts)
        assert {"lora", "delrec-sasrec-ta", "delrec-sasrec-rps", "delrec-gru4rec", "delrec-caser"} <= set(
            config.finetune.variants
        )
    assert preset_config("paper").finetune.method == "adalora"
    assert preset_config("paper").distill.num_soft_tokens == 100


def test_variant_without_its_soft_prompt_is_rejected():
    with pytest.raises(ConfigError, match="delrec-caser.*distill.prompts"):
        load_config("cpu", finetune={"variants": ["lora", "delrec-caser"]})
