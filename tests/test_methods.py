"""The method interface: the import graph of the library, the registry, and the order diagnostic's
shuffle of exactly what each model reads."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from delrec_lib.analysis import shuffle_window
from delrec_lib.config import LLMConfig, RunConfig, TeachersConfig
from delrec_lib.errors import ConfigError
from delrec_lib.methods import comparison_pairs, family_of, run_methods, teacher_pairs

PACKAGE = Path(__file__).resolve().parents[1] / "delrec_lib"
# Modules that train a method from upstream artifacts. None may import another: what one needs of
# another comes through its artifact and manifest, read by a loader in a shared module. A package is
# one stage, except DELRec's two (stage 1 and stage 2 meet through the soft prompt's files, read by
# delrec/soft_prompt.py); the teachers are upstream of every stage, read through their own loaders.
STAGES = ("delrec_lib.delrec.distill", "delrec_lib.delrec.finetune", "delrec_lib.delrec", "delrec_lib.llmsrec", "delrec_lib.p2rec")
# What sees methods only through the registry.
REGISTRY_USERS = ("delrec_lib.evaluation", "delrec_lib.analysis", "delrec_lib.methods")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """delrec_lib module -> the delrec_lib modules it imports anywhere in its body (functions included,
    ``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        type_only = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only |= {id(n) for b in node.body for n in ast.walk(b)}
        edges = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # the longest prefix that is a module of the package
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("delrec_lib"):
                    edges.add(t)
        graph[name] = edges
    return graph


def is_stage(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def separate(a: str, b: str) -> bool:
    """Two stages that may not import each other: neither holds the other (stage 1 may use the rest of
    its package, the soft prompt, but not stage 2)."""
    return not (a == b or a.startswith(b + ".") or b.startswith(a + "."))


def test_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_stage_imports_another_and_evaluation_imports_none():
    graph = import_graph()
    for module, edges in graph.items():
        own = is_stage(module)
        for target in edges:
            other = is_stage(target)
            if own and other and separate(own, other):
                pytest.fail(f"stage module {module} imports stage module {target}")
    for user in REGISTRY_USERS:
        seen, todo = set(), [user]
        while todo:  # everything it imports, transitively
            for n in graph[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        stages = sorted(n for n in seen if is_stage(n))
        assert not stages, f"{user} reaches stage modules {stages}; it must go through the method registry"


def test_the_graph_walker_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "delrec_lib.methods" in graph["delrec_lib.evaluation"]
    assert "delrec_lib.llm" in graph["delrec_lib.evaluation"]  # imported inside method_context
    assert not any(m.startswith("delrec_lib.llm") for m in graph["delrec_lib.methods"])  # the registry knows no LLM
    assert "delrec_lib.teachers.stage" in graph["delrec_lib.teachers.methods"]


def test_registry_lists_the_runs_methods_in_table_order():
    config = RunConfig()
    methods = run_methods(config)
    assert methods[:5] == ["popularity", "sasrec", "gru4rec", "caser", "zero-shot"]
    assert {"lora", "delrec-sasrec"} <= set(methods)
    assert ("delrec-sasrec", "sasrec") in comparison_pairs(config)
    assert ("delrec-sasrec", "lora") in comparison_pairs(config)
    assert ("delrec-sasrec", "sasrec") in teacher_pairs(config)
    assert family_of(config, "sasrec").kind("sasrec") == "teacher"
    with pytest.raises(ConfigError, match="not produced by this run"):
        family_of(config, "no-such-method")


def test_a_plugin_joins_the_registry_and_bad_plugins_are_named():
    config = RunConfig(plugins=("tests.toy_method:ToyFamily",))
    assert run_methods(config)[-1] == "toy-nearest-id"
    assert ("toy-nearest-id", "popularity") in comparison_pairs(config)
    assert ("toy-nearest-id", "sasrec") in teacher_pairs(config)
    with pytest.raises(ConfigError, match=r"plugins\[0\]: cannot import 'tests.nope'"):
        run_methods(RunConfig(plugins=("tests.nope:X",)))
    with pytest.raises(ConfigError, match=r"plugins\[0\]: module 'tests.toy_method' has no 'Nope'"):
        run_methods(RunConfig(plugins=("tests.toy_method:Nope",)))
    with pytest.raises(ConfigError, match=r"plugins: expected .*each once, .*\(an item twice\)"):
        RunConfig(plugins=("tests.toy_method:ToyFamily", "tests.toy_method:ToyFamily"))


# --------------------------------------------------------------------------------------------
# The order diagnostic shuffles exactly what each model reads
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from .stage_fixtures import synthetic_data

    return synthetic_data(tmp_path_factory.mktemp("methods") / "data")


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_shuffle_keeps_the_items_each_teacher_reads(small_data, name, one_torch_thread):
    from delrec_lib.teachers import build_model, left_pad, teacher_spec
    from delrec_lib.teachers.methods import ModelRecommender

    data = small_data
    config = TeachersConfig(max_len=8, stride=8)
    rec = ModelRecommender(name, build_model(teacher_spec(name, config, data)))
    window = {"sasrec": 8, "gru4rec": 8, "caser": config.caser.window}[name]
    rng = np.random.default_rng(0)
    moved = 0
    for uid in data.user_ids():
        history = data.history(int(uid), "test")
        shuffled = shuffle_window(history, rec.visible_history(history), rng)
        seen = left_pad([history], rec.model.max_len)[0, -window:]  # what the model's forward reads
        seen_shuffled = left_pad([shuffled], rec.model.max_len)[0, -window:]
        assert sorted(seen.tolist()) == sorted(seen_shuffled.tolist()), "the shuffle changed which items the model sees"
        assert shuffled[: len(history) - rec.visible_history(history)] == history[: len(history) - rec.visible_history(history)]
        moved += int(not torch.equal(seen, seen_shuffled))
    assert moved > len(data.user_ids()) // 2  # and the order did change for most users


def test_caser_reads_only_its_window(small_data, one_torch_thread):
    from delrec_lib.teachers import build_model, teacher_spec
    from delrec_lib.teachers.methods import ModelRecommender

    data = small_data
    rec = ModelRecommender("caser", build_model(teacher_spec("caser", TeachersConfig(max_len=8, stride=8), data)))
    history = data.history(int(data.user_ids()[0]), "test")
    w = rec.visible_history(history)
    assert w == 5
    cands = np.array([[1, 2, 3, 4, 5]])
    changed_outside = [99 if i < len(history) - w else h for i, h in enumerate(history)]
    changed_outside = [min(x, data.num_items) for x in changed_outside]
    a = rec.score(np.array([1]), [history], cands)
    b = rec.score(np.array([1]), [changed_outside], cands)
    np.testing.assert_allclose(a, b)  # items outside the window do not reach Caser


def test_shuffle_keeps_the_titles_an_llm_prompt_shows(small_data, tmp_path, one_torch_thread):
    from delrec_lib.llm import load_backbone
    from delrec_lib.llm.ranker import LLMRanker, LLMRecommender, RecExample

    from .llm_fixtures import save_tiny_causal

    data = small_data
    backbone = load_backbone(str(save_tiny_causal(tmp_path / "tiny")), dtype="float32")
    rec = LLMRecommender("zero-shot", LLMRanker(backbone, LLMConfig(history_len=4), data.titles, None, None))
    rng = np.random.default_rng(0)
    for uid in data.user_ids()[:10]:
        history = data.history(int(uid), "test")
        cands = tuple(int(c) for c in data.candidate_sets("test").set_index("user_id").loc[int(uid), "candidates"])
        shuffled = shuffle_window(history, rec.visible_history(history), rng)
        before = rec.ranker.prompt(RecExample(int(uid), tuple(history), cands))
        after = rec.ranker.prompt(RecExample(int(uid), tuple(shuffled), cands))
        assert before.history_shown == after.history_shown == rec.visible_history(history)
        shown = [data.titles[i] for i in history[-before.history_shown :]]
        shown_after = [data.titles[i] for i in shuffled[-after.history_shown :]]
        assert sorted(shown) == sorted(shown_after)
