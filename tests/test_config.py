import dataclasses
import functools
import json
import re
import typing

import pytest

from delrec_lib.config import (
    FIELD_RULES,
    PRESET_NAMES,
    PRESETS,
    DataConfig,
    DistillConfig,
    Flag,
    Int,
    Items,
    Maybe,
    Num,
    OneOf,
    RunConfig,
    Satisfies,
    Section,
    TeachersConfig,
    Text,
    config_to_dict,
    load_config,
    override,
    preset_config,
)
from delrec_lib.data import prepare_dataset
from delrec_lib.errors import ConfigError

from .stage_fixtures import synthetic_data


def test_every_preset_resolves():
    assert tuple(PRESETS) == PRESET_NAMES  # the names RunConfig.preset accepts
    for name in ("smoke", "cpu", "cpu-long", "cpu-seeds", "cpu-study", "cpu-ablations", "paper"):
        assert preset_config(name).preset == name


def test_cpu_long_and_cpu_seeds_are_the_cpu_preset_trained_longer_or_again():
    cpu, long, seeds = preset_config("cpu"), preset_config("cpu-long"), preset_config("cpu-seeds")
    assert not cpu.p2rec.variants and preset_config("cpu-ablations").p2rec.variants  # the runner skips 06 on cpu
    assert long.distill.max_steps == 3 * cpu.distill.max_steps and long.finetune.max_steps == 3 * cpu.finetune.max_steps
    assert long.finetune.variants == cpu.finetune.variants and long.finetune.seeds == cpu.finetune.seeds == ()
    assert seeds.finetune.seeds == (1, 2) and dataclasses.replace(seeds.finetune, seeds=()) == cpu.finetune
    # everything else as the cpu preset: the same teachers, prompts, data, methods and evaluation
    for section in ("data", "teachers", "llm", "llmsrec", "p2rec", "eval"):
        assert getattr(long, section) == getattr(cpu, section) == getattr(seeds, section), section
    assert seeds.distill.seeds == (1, 2) and dataclasses.replace(seeds.distill, seeds=()) == cpu.distill  # both stages again
    # cpu-study: the other head and the untrained-prompt control, everything else as cpu (a copy reuses the teachers)
    study = preset_config("cpu-study")
    assert study.llm == dataclasses.replace(cpu.llm, head="index") and cpu.llm.head == "title"
    assert study.finetune.variants == (*cpu.finetune.variants, "delrec-sasrec-untrained")
    for section in ("data", "teachers", "distill", "llmsrec", "p2rec", "eval"):
        assert getattr(study, section) == getattr(cpu, section), section


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


# --------------------------------------------------------------------------------------------
# Every field has a rule, and every rule refuses bad values at load, naming the dotted field
# --------------------------------------------------------------------------------------------


def config_classes(cls=RunConfig, prefix=""):
    """(dataclass, its dotted section) for RunConfig and every config dataclass nested in it."""
    yield cls, prefix
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            yield from config_classes(hint, f"{prefix}.{name}" if prefix else name)


def leaf_fields():
    """(dotted field, its rule) for every field that is not itself a section."""
    for cls, section in config_classes():
        for f in dataclasses.fields(cls):
            rule = FIELD_RULES.get(cls, {}).get(f.name)
            if not isinstance(rule, Section):
                yield (f"{section}.{f.name}" if section else f.name), rule


def bad_values(rule, current):
    """Values ``rule`` must refuse: out of range, of the wrong type, not a member."""
    if isinstance(rule, Maybe):
        return bad_values(rule.rule, current)
    if isinstance(rule, Int):
        return [rule.lo - 1, "x", 1.5, True] + ([rule.hi + 1] if rule.hi is not None else [])
    if isinstance(rule, Num):
        out = [rule.lo if rule.open_lo else rule.lo - 1, "x", float("nan")]
        return out + ([rule.hi if rule.open_hi else rule.hi + 1] if rule.hi is not None else [])
    if isinstance(rule, OneOf):
        return ["bogus", 3]
    if isinstance(rule, Text):
        return ["", 5] + (["a/b c"] if rule.pattern else [])
    if isinstance(rule, Flag):
        return ["yes", 1]
    if isinstance(rule, Satisfies):
        return ["bogus", 5]
    if isinstance(rule, Items):
        out = ["not a list"] + [(bad,) for bad in bad_values(rule.item, None)[:2]]
        if rule.min_len:
            out.append(())
        if rule.length is not None:
            out.append(tuple(current) + tuple(current[:1]))
        if rule.unique and current:
            out.append((current[0], current[0]))
        return out
    raise AssertionError(f"no bad values known for rule {rule!r}")


def nested(path: str, value):
    *sections, name = path.split(".")
    out = {name: list(value) if isinstance(value, tuple) else value}
    for s in reversed(sections):
        out = {s: out}
    return out


def test_every_field_of_every_config_dataclass_has_a_rule():
    missing = [
        f"{cls.__name__}.{f.name}" for cls, _ in config_classes() for f in dataclasses.fields(cls)
        if f.name not in FIELD_RULES.get(cls, {})
    ]  # fmt: skip
    assert not missing, f"fields without a validation rule in FIELD_RULES: {missing}"


@pytest.mark.parametrize("path, rule", list(leaf_fields()), ids=[p for p, _ in leaf_fields()])
def test_a_bad_value_is_refused_naming_the_field(path, rule):
    base = preset_config("cpu")
    section, name = (path.rsplit(".", 1) if "." in path else ("", path))
    owner = functools.reduce(getattr, section.split("."), base) if section else base
    values = bad_values(rule, getattr(owner, name))
    assert values
    for bad in values:
        # From a file or a notebook's parameters (coerced, then checked) ...
        with pytest.raises(ConfigError) as e:
            override(base, nested(path, bad))
        assert path in str(e.value) or (path == "preset" and "'preset'" in str(e.value)), str(e.value)
        # ... and from Python (dataclasses built directly).
        with pytest.raises(ConfigError) as e:
            dataclasses.replace(owner, **{name: bad})
        assert path in str(e.value) and "expected" in str(e.value), str(e.value)
        if not isinstance(bad, tuple):
            assert repr(bad) in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "text, field, value",
    [
        ("max_users = -1", "max_users", "-1"),
        ("max_users = 0", "max_users", "0"),
        ("[distill]\nmax_train_users = -1", "distill.max_train_users", "-1"),
        ("[eval]\ngeneration_users = -5", "eval.generation_users", "-5"),
        ("[teachers]\npatience = 0", "teachers.patience", "0"),
        ("[teachers]\npatience = -3", "teachers.patience", "-3"),
        ("[distill]\neval_every = 0", "distill.eval_every", "0"),
        ("[finetune]\nlr = -1e-4", "finetune.lr", "-0.0001"),
        ("[teachers.sasrec]\nlr = -0.1", "teachers.sasrec.lr", "-0.1"),
        ("[data]\nseed = -1", "data.seed", "-1"),
        ("[teachers.sasrec]\nhidden = 0", "teachers.sasrec.hidden", "0"),
        ('[finetune]\nselect_metric = "bogus"', "finetune.select_metric", "'bogus'"),
        ('[eval]\npaired_metrics = ["HR@1", "hr@1"]', "eval.paired_metrics[1]", "'hr@1'"),
        # cross-field: a soft prompt of a teacher the run does not train
        ('[teachers]\nmodels = ["gru4rec"]\n[distill]\nprompts = ["gru4rec", "caser-ta"]\n[finetune]\nvariants = ["lora"]\n'
         '[p2rec]\nvariants = ["p2rec-gru4rec"]\nsource_teacher = "gru4rec"', "distill.prompts", "'caser-ta'"),
        ("[distill]\nrps_top_k = 30", "distill.rps_top_k", "30"),
        ("[distill]\nrps_top_k = 1\nrps_random = 0", "distill.rps_random", "0"),
        ("[distill]\nknown_answer_rps_top_k = 1\nknown_answer_rps_random = 0", "distill.known_answer_rps_random", "0"),
        ("[teachers.sasrec]\nheads = 3", "teachers.sasrec.heads", "3"),
        ('[finetune]\nmethod = "adalora"\nmax_steps = 15', "finetune.max_steps", "15"),
    ],
)
def test_issue_examples_are_refused_at_load_naming_file_field_and_value(tmp_path, text, field, value):
    f = tmp_path / "run.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(None, f)
    message = str(e.value)
    assert message.startswith(f"{f}: ") and field in message and value in message, message


def test_the_shipped_presets_load_and_reload_from_the_config_json_a_run_writes(tmp_path):
    for name in PRESETS:
        config = preset_config(name)
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(config_to_dict(config)))
        assert load_config(None, f) == config  # every value is checked again on the way in


def test_not_utf8_and_non_object_config_files_are_one_clear_error(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('data_dir = "donn\u00e9es"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.toml: not UTF-8 text \(byte 16 is b'\\xe9'\)"):
        load_config(None, latin)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list\.json: expected an object of config sections at the top level, got list"):
        load_config(None, listed)
    preset = tmp_path / "preset.json"
    preset.write_text('{"preset": ["smoke"]}')
    with pytest.raises(ConfigError, match=r"preset\.json: preset: expected one of smoke, cpu"):
        load_config(None, preset)


def test_num_negatives_beyond_the_catalogue_is_refused_before_any_candidate_is_drawn(tmp_path):
    synthetic_data(tmp_path)  # processed with 5 negatives
    before = (tmp_path / "processed" / "toy" / "manifest.json").read_bytes()
    with pytest.raises(ConfigError) as e:
        prepare_dataset(DataConfig(dataset="toy", num_negatives=25), tmp_path)
    match = re.fullmatch(r"data\.num_negatives = 25: at most (\d+) for toy, whose catalogue has 30 items of which one user "
                         r"interacted with (\d+)", str(e.value))  # fmt: skip
    assert match, str(e.value)
    assert (tmp_path / "processed" / "toy" / "manifest.json").read_bytes() == before, "earlier outputs untouched"
    limit = int(match.group(1))
    assert limit == 30 - int(match.group(2))
    prepare_dataset(DataConfig(dataset="toy", num_negatives=limit), tmp_path)  # exactly the limit is fine


# --------------------------------------------------------------------------------------------
# Each field declares its rule once, with its type; each kind of rule keeps its message
# --------------------------------------------------------------------------------------------

RULE_MESSAGES = [  # the wording of every kind of rule, as config.py gave it before the package split
    ('teachers.patience', 0, 'teachers.patience: expected an integer >= 1, got 0'),
    ('data.seed', 4294967296, 'data.seed: expected an integer in [0, 4294967295], got 4294967296'),
    ('distill.lr', 0, 'distill.lr: expected a number > 0, got 0'),
    ('finetune.lora_dropout', 1.0, 'finetune.lora_dropout: expected a number in [0, 1), got 1.0'),
    ('eval.confidence', 1.0, 'eval.confidence: expected a number in (0, 1), got 1.0'),
    ('eval.bootstrap', 99, 'eval.bootstrap: expected an integer >= 100, got 99'),
    ('llm.dtype', 'f16', "llm.dtype: expected one of 'auto', 'float32', 'bfloat16', got 'f16'"),
    ('data.dataset', 'a/b', "data.dataset: expected a dataset name (letters, digits, '.', '_', '-'), got 'a/b'"),
    ('llm.backbone', ' ', "llm.backbone: expected a non-empty string, got ' '"),
    ('llm.list_candidates', 1, 'llm.list_candidates: expected true or false, got 1'),
    ('distill.prompts', ('sasrec-x',), "distill.prompts[0]: expected '<teacher>', '<teacher>-ta' or '<teacher>-rps' with a teacher among sasrec, gru4rec, caser, rule-sharedword, rule-firstword, popularity, got 'sasrec-x'"),
    ('finetune.variants', ('delrec-x',), "finetune.variants[0]: expected 'lora', 'delrec-<soft prompt>' or 'delrec-<soft prompt>-untrained', a soft prompt being '<teacher>', '<teacher>-ta' or '<teacher>-rps' with a teacher among sasrec, gru4rec, caser, rule-sharedword, rule-firstword, popularity, got 'delrec-x'"),
    ('llmsrec.variants', ('llm-srec-x',), "llmsrec.variants[0]: expected one of 'llm-srec', 'llm-srec-nounif', 'llm-srec-nodist', 'llm-srec-shuffled', got 'llm-srec-x'"),
    ('teachers.threads', 0, 'teachers.threads: expected an integer >= 1, got 0'),
    ('eval.paired_metrics', ('HR@1', 'HR@1'), "eval.paired_metrics: expected a list of items, each one of 'HR@1', 'HR@5', 'HR@10', 'NDCG@5', 'NDCG@10', 'MRR', each once, got ['HR@1', 'HR@1'] (an item twice)"),
    ('distill.task_weights', (1.0,), 'distill.task_weights: expected a list of 2 items, each a number >= 0, got (1.0,)'),
    ('finetune.target_modules', (), 'finetune.target_modules: expected a list of at least one items, each a module name, each once, got ()'),
    ('p2rec.seed_variants', ('p2rec-x',), "p2rec.seed_variants[0]: expected 'p2rec-<teacher>', 'p2rec-<teacher>-k<K>' (K >= 2) or 'p2rec-<teacher>-nosft' with a teacher among sasrec, gru4rec, caser, got 'p2rec-x'"),
    ('teachers.sasrec', 3, 'teachers.sasrec: expected a SASRecConfig, got 3'),
    ('preset', 'nope', "preset: expected one of 'smoke', 'cpu', 'cpu-long', 'cpu-seeds', 'cpu-study', 'cpu-ablations', 'paper', got 'nope'"),
    ('plugins', ('x',), "plugins[0]: expected 'module:FamilyClass', got 'x'"),
    ('max_users', 0, 'max_users: expected an integer >= 1, got 0'),
]


@pytest.mark.parametrize("path, bad, message", RULE_MESSAGES, ids=[p for p, _, _ in RULE_MESSAGES])
def test_each_kind_of_rule_names_the_field_what_it_expected_and_the_value(path, bad, message):
    base = RunConfig()
    section, name = (path.rsplit(".", 1) if "." in path else ("", path))
    owner = functools.reduce(getattr, section.split("."), base) if section else base
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(owner, **{name: bad})
    assert str(e.value) == message


def test_a_fields_type_is_its_rule_and_a_field_without_one_is_refused_at_definition(monkeypatch):
    from typing import Annotated, Literal

    from delrec_lib.config import rules

    monkeypatch.setattr(rules, "FIELD_RULES", dict(FIELD_RULES))  # the classes below stay out of the kit's table

    @dataclasses.dataclass(frozen=True)
    class Toy(rules.Checked):
        size: Annotated[int, Int(1)] = 3
        on: bool = True
        mode: Literal["a", "b"] = "a"

    assert Toy() == Toy(size=3, on=True, mode="a")
    for change, message in [({"size": 0}, "Toy.size: expected an integer >= 1, got 0"),
                            ({"on": 1}, "Toy.on: expected true or false, got 1"),
                            ({"mode": "c"}, "Toy.mode: expected one of 'a', 'b', got 'c'")]:  # fmt: skip
        with pytest.raises(ConfigError) as e:
            Toy(**change)
        assert str(e.value) == message
    with pytest.raises(TypeError, match=r"Loose: fields \['size'\] declare no rule"):

        @dataclasses.dataclass(frozen=True)
        class Loose(rules.Checked):
            size: int = 3
            on: bool = True
    assert not any(cls.__name__ == "Loose" for cls in rules.FIELD_RULES)


def test_importing_the_config_loads_neither_pandas_nor_torch():
    import subprocess
    import sys

    code = "import sys, delrec_lib.config; print(sorted({'pandas', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "a rule's description computed at import (metric names need pandas)"


def test_a_setting_added_later_leaves_artifact_identities_unchanged_at_its_default():
    """distill.loss / kl_temperature / seeds / known_answer_rps_* / known_answer_history_len / schedule / heldout_tasks /
    known_answer_heldout_tasks / known_answer_batch_size and teachers.rule_window were added after finished runs
    existed: at their defaults an artifact's hash reads as before (those runs stay valid), a run's config.json still
    shows them, and set otherwise they count."""
    from delrec_lib.artifacts import sha256_json, to_jsonable

    added = ("loss", "kl_temperature", "seeds", "known_answer_rps_top_k", "known_answer_rps_random", "known_answer_history_len",
             "schedule", "heldout_tasks", "known_answer_heldout_tasks", "known_answer_batch_size")  # fmt: skip
    cfg = DistillConfig()
    shown = to_jsonable(cfg)
    assert [shown[k] for k in added] == ["ce", 1.0, [], None, None, None, "constant", "all", None, None]
    assert not set(added) & set(to_jsonable(cfg, identity=True))
    assert sha256_json(cfg) == sha256_json({k: v for k, v in shown.items() if k not in added})
    assert sha256_json(RunConfig(distill=cfg)) == sha256_json({**to_jsonable(RunConfig()), "distill": to_jsonable(cfg, identity=True),
                                                               "teachers": to_jsonable(TeachersConfig(), identity=True)})  # fmt: skip
    changes = (dataclasses.replace(cfg, loss="kl"), dataclasses.replace(cfg, kl_temperature=0.5), dataclasses.replace(cfg, seeds=(1,)),
               dataclasses.replace(cfg, known_answer_rps_top_k=2), dataclasses.replace(cfg, known_answer_rps_random=8),
               dataclasses.replace(cfg, known_answer_history_len=3), dataclasses.replace(cfg, schedule="linear"),
               dataclasses.replace(cfg, heldout_tasks="trained"), dataclasses.replace(cfg, known_answer_heldout_tasks="trained"),
               dataclasses.replace(cfg, known_answer_batch_size=4))
    for changed in changes:
        assert sha256_json(changed) != sha256_json(cfg)
    assert sha256_json(dataclasses.replace(cfg, lr=0.1)) != sha256_json(cfg)  # an ordinary setting counts as ever
    teachers = TeachersConfig()
    assert to_jsonable(teachers)["rule_window"] == 10 and "rule_window" not in to_jsonable(teachers, identity=True)
    assert sha256_json(dataclasses.replace(teachers, rule_window=3)) != sha256_json(teachers)
