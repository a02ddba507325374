"""The params.yaml loader: property-based robustness, grid expansion, and the messages.

The properties: whatever mapping (or text) a user writes, the loader either returns a config or
raises ConfigError (never another exception) with one line that starts with the file's label;
and a valid grid expands to exactly the trials the schema documents.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.study.config import MAX_PARAMS_VALUES, StudyConfig, load_params, parse_params
from pipeline.sweep.grid import trial_key
from pipeline.util.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LABEL = "study/params.yaml"

VALID: dict[str, Any] = {
    "data": {"source": "bundled", "patch_size": 32, "degradation": {"kind": "denoising"}},
    "priors": {
        "l1": {"type": "wavelet", "levels": 2, "step_size": 0.3},
        "wl1": {"type": "wavelet", "norm": "weighted_l1", "levels": 3},
        "pnp": {"type": "pnp", "denoiser": "drunet", "sigma_init": 0.05},
    },
    "train": {"epochs": 2, "lr": 0.05},
    "sweep": {
        "priors": ["l1", "wl1"],
        "estimators": ["deq", "rjfb", "unrolled"],
        "depths": [1, 2],
        "restarts": [0, 3],
        "restart_tols": [None, 1e-3],
        "unrolled_iterations": [4],
        "extra_trials": [{"prior": "pnp", "estimator": "jfb"}],
        "deq": {"tol": 1e-4},
    },
    "ray": {"num_cpus": 2, "gpus_per_trial": 0},
    "mlflow": {"experiment": "x"},
    "report": {"images": 2},
}


def assert_clean_error(err: ConfigError, label: str = LABEL) -> None:
    text = str(err)
    assert text.startswith(f"{label}: "), text
    assert len(text.splitlines()) == 1, text
    assert len(text) < 600, text


def check(raw: Any) -> StudyConfig | None:
    """parse_params either validates or raises a clean ConfigError; nothing else."""
    try:
        cfg = parse_params(raw, label=LABEL)
    except ConfigError as err:
        assert_clean_error(err)
        return None
    trials = cfg.trials()  # a valid config always expands, to uniquely named trials
    names = [t.name for t in trials]
    assert trials and len(set(names)) == len(names)
    assert len({trial_key(cfg, t) for t in trials}) == len(trials)
    return cfg


# --------------------------------------------------------------------------- strategies


def _field_names() -> list[str]:
    """Every key the schema knows (sections, nested fields), to hit real validators often."""
    from pydantic import BaseModel

    seen: set[str] = set()
    todo: list[type[BaseModel]] = [StudyConfig]
    done: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in done:
            continue
        done.add(model)
        for name, field in model.model_fields.items():
            seen.add(name)
            stack = [field.annotation]
            while stack:
                ann = stack.pop()
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    todo.append(ann)
                stack.extend(getattr(ann, "__args__", ()) or ())
                stack.extend(getattr(ann, "__metadata__", ()) or ())
    return sorted(seen)


KEYS = st.sampled_from([*_field_names(), "l1", "pnp", "wavelet"]) | st.text(max_size=8)
NAMES = st.sampled_from(
    ["wavelet", "pnp", "deq", "rjfb", "jfb", "unrolled", "l1", "wl1", "haar", "db4", "warm", "y"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | NAMES
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=5),
    max_leaves=25,
)
MAPPINGS = st.dictionaries(KEYS, VALUES, max_size=8)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += paths(v, (*prefix, i))
    return out


VALID_PATHS = paths(VALID)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """VALID with one to three edits: a value replaced, a key removed, or a key added."""
    raw = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS))
        node: Any = raw
        try:
            for part in path[:-1]:
                node = node[part]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(VALUES)
            elif action == "delete":
                del node[path[-1]]
            elif isinstance(node, dict):
                node[draw(KEYS)] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this branch
    return raw


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- properties


@FAST
@given(MAPPINGS)
def test_arbitrary_mappings_load_or_raise_a_one_line_config_error(raw: dict[str, Any]) -> None:
    check(raw)


@FAST
@given(mutated())
def test_mutations_of_a_valid_file_load_or_raise_a_one_line_config_error(raw: dict) -> None:
    check(raw)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=200), MAPPINGS.map(yaml.safe_dump), mutated().map(yaml.dump)))
def test_arbitrary_files_load_or_raise_a_one_line_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_params(path)
        except ConfigError as err:
            assert_clean_error(err, label=str(path))
        else:
            assert cfg.root == Path(d).resolve()


GRID_PRIORS = ["a", "b", "c"]


@st.composite
def grids(draw: st.DrawFn) -> dict[str, Any]:
    def some(values: st.SearchStrategy[Any], n: int = 4) -> list[Any]:
        return draw(st.lists(values, min_size=1, max_size=n))

    return {
        "priors": some(st.sampled_from(GRID_PRIORS)),
        "estimators": some(st.sampled_from(["deq", "rjfb", "jfb", "unrolled"])),
        "depths": some(st.integers(1, 12)),
        "restarts": some(st.integers(0, 6)),
        "restart_tols": some(st.none() | st.floats(1e-6, 1.0)),
        "starts": some(st.sampled_from(["y", "warm"]), 2),
        "seeds": some(st.integers(0, 2**32 - 1), 3),
        "unrolled_iterations": some(st.integers(1, 50)),
    }


def documented_count(g: dict[str, Any]) -> int:
    """SweepConfig's docstring: deq/jfb once per prior and seed; rjfb over depths x restarts x
    starts x restart_tols (a tolerance needs restarts > 0); unrolled over unrolled_iterations;
    repeated values count once."""
    tols = set(g["restart_tols"])
    restarts = set(g["restarts"])
    per_estimator = {
        "deq": 1,
        "jfb": 1,
        "unrolled": len(set(g["unrolled_iterations"])),
        "rjfb": len(set(g["depths"]))
        * len(set(g["starts"]))
        * (
            (None in tols) * len(restarts)
            + len(tols - {None}) * len([r for r in restarts if r > 0])
        ),
    }
    runs = len(set(g["priors"])) * len(set(g["seeds"]))
    return runs * sum(per_estimator[e] for e in set(g["estimators"]))


@settings(max_examples=200, deadline=None)
@given(grids())
def test_valid_grids_expand_to_the_documented_trial_count(grid: dict[str, Any]) -> None:
    raw = {"priors": {p: {"type": "wavelet"} for p in GRID_PRIORS}, "sweep": grid}
    empty_rjfb = "rjfb" in grid["estimators"] and (
        None not in grid["restart_tols"] and not any(r > 0 for r in grid["restarts"])
    )
    if empty_rjfb:
        with pytest.raises(ConfigError, match=r"sweep\.restart_tols: the rjfb grid is empty"):
            parse_params(raw)
        return
    cfg = parse_params(raw)
    trials = cfg.trials()
    assert len(trials) == documented_count(grid)
    assert len({t.name for t in trials}) == len(trials)
    for t in trials:  # every trial is a point of the grid
        assert t.prior in grid["priors"] and t.estimator in grid["estimators"]
        assert t.seed in grid["seeds"]
        if t.estimator == "rjfb":
            assert t.depth in grid["depths"] and t.restarts in grid["restarts"]
            assert t.restart_tol in grid["restart_tols"] and t.start in grid["starts"]


@settings(max_examples=100, deadline=None)
@given(grids(), st.lists(st.integers(0, 10**6), max_size=4))
def test_extra_trials_add_only_new_points(grid: dict[str, Any], picks: list[int]) -> None:
    grid["restart_tols"] = [None]  # keep the rjfb grid non-empty
    raw = {"priors": {p: {"type": "wavelet"} for p in GRID_PRIORS}, "sweep": grid}
    base = parse_params(raw).trials()
    new = [
        {"prior": "a", "estimator": "rjfb", "depth": 13 + i, "restarts": 1, "seed": 0}
        for i in range(2)
    ]
    dupes = [base[i % len(base)].model_dump() for i in picks]
    raw["sweep"]["extra_trials"] = dupes + new
    trials = parse_params(raw).trials()
    assert [t.name for t in trials[: len(base)]] == [t.name for t in base]
    assert len(trials) == len(base) + len(new)


# --------------------------------------------------------------------------- messages


def test_the_shipped_params_file_is_valid_and_expands_to_the_documented_study() -> None:
    cfg = load_params(REPO / "params.yaml")
    assert cfg.root == REPO
    trials = cfg.trials()
    assert len(trials) == len({t.name for t in trials})
    readme = (REPO / "README.md").read_text()
    assert f"{len(trials)} trials" in readme


def expect(raw: Any, pattern: str) -> str:
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_params(raw, label=LABEL)
    assert_clean_error(info.value)
    return str(info.value)


def edit(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    [
        ("sweep.depths", [1, True], r"sweep\.depths\[1\]: expected an integer, got True"),
        ("train.lr", True, r"train\.lr: expected a number, got True \(a boolean\)"),
        ("train.lr", float("nan"), r"train\.lr: expected a finite number, got nan"),
        ("sweep.seeds", [-1], r"sweep\.seeds\[0\]: expected an integer >= 0"),
        ("data.seed", 2**40, r"data\.seed: expected an integer <= 4294967295"),
        ("data.source", "", r"data\.source: expected a non-empty string"),
        ("ray.storage_path", "", r"ray\.storage_path: expected a non-empty string"),
        ("priors.l1.wavelet", "db4x", r"priors\.l1\.wavelet: unknown wavelet 'db4x'"),
        ("priors.l1.weights_init", 2.0, r"priors\.l1\.weights_init: applies to norm weighted_l1"),
        ("priors.l1.levls", 2, r"priors\.l1\.levls: unknown key \(did you mean 'levels'\?\)"),
        ("priors.pnp.nb", 0, r"priors\.pnp\.nb: expected an integer >= 1, got 0"),
        ("sweep.starts", ["cold"], r"sweep\.starts\[0\]: unknown start 'cold'; expected one of"),
        ("train.optimizer", 3, r"train\.optimizer: expected one of 'adam', 'sgd', got 3"),
        ("data.degradation.blur_size", 9, None),  # ignored for denoising: valid
        ("mlflow.tracking_uri", "postgresql+psycopg2://127.0.0.1/db", None),
        ("mlflow.tracking_uri", "sqlite:///mlflow.db", None),
        ("priors.l1.train", {"lr": -1}, r"priors\.l1\.train\.lr: expected a number > 0"),
    ],
)
def test_messages_name_the_key_and_what_is_expected(path: str, value: Any, pattern: str) -> None:
    raw = edit(path, value)
    if pattern is None:
        check(raw)
        return
    expect(raw, pattern)


def test_a_key_with_odd_characters_is_quoted_on_one_line() -> None:
    raw = copy.deepcopy(VALID)
    raw["data"]["a\nb"] = 1
    expect(raw, r"data\.'a\\nb': unknown key")


def test_trial_names_never_collide() -> None:
    # two adaptive tolerances equal to 6 significant digits were one trial name ("%g")
    raw = edit("sweep.restart_tols", [1e-3, 1.0000001e-3])
    names = [t.name for t in parse_params(raw).trials() if t.restart_tol is not None]
    assert len(names) == len(set(names)) == 2 * 2 * 2  # 2 priors x 2 depths x (T=3) x 2 tols
    # an unrolled extra trial of another depth is another trial
    raw = edit(
        "sweep.extra_trials",
        [{"prior": "l1", "estimator": "unrolled", "iterations": 4, "depth": 2}],
    )
    names = [t.name for t in parse_params(raw).trials()]
    assert "l1-unrolled-N4-s0" in names and "l1-unrolled-N4-K2-s0" in names


def test_yaml_traps(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    cases = {
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in itertools.pairwise("abcdef")
        ): rf"more than {MAX_PARAMS_VALUES} values once YAML aliases are expanded",
        "a: " + "[" * 3000 + "]" * 3000 + "\n": r"invalid YAML: nested too deeply",
        "data: {seed: " + "9" * 5000 + "}\n": r"invalid YAML: Exceeds the limit",
        "x: 1\nx: 2\n": r"invalid YAML at line 2, column 1: duplicate key 'x' \(first at line 1\)",
        "base: &b {type: wavelet}\npriors: {l1: {<<: *b, levels: 2}}\n"
        "sweep: {priors: [l1], estimators: [deq]}\n": r"base: unknown key",
        "# comment only\n": r"the file is empty",
    }
    for text, pattern in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=pattern) as info:
            load_params(path)
        assert_clean_error(info.value, label=str(path))
    # YAML merge keys still work (overriding a merged key is not a duplicate)
    path.write_text(
        "priors:\n  l1: &b {type: wavelet, levels: 3}\n  l2: {<<: *b, levels: 2}\n"
        "sweep: {priors: [l1, l2], estimators: [deq]}\n"
    )
    cfg = load_params(path)
    assert cfg.priors["l2"].levels == 2 and cfg.priors["l1"].levels == 3


def test_file_level_mistakes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": is a folder \(expected a YAML params file\)"):
        load_params(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"too large for a params file"):
        load_params(big)


def test_every_params_field_says_what_it_is() -> None:
    import inspect

    from pydantic import BaseModel

    from pipeline.study import config

    undescribed = [
        f"{name}.{field}"
        for name, model in vars(config).items()
        if inspect.isclass(model)
        and issubclass(model, BaseModel)
        and model.__module__.startswith("pipeline.study.")  # the schema's modules
        for field, info in model.model_fields.items()
        if not info.description
    ]
    assert not undescribed, undescribed


def test_prior_type_messages_come_from_the_registry() -> None:
    from pipeline.study.config import PRIOR_TYPES, parse_prior, prior_types_text

    assert set(PRIOR_TYPES) == {"wavelet", "pnp"}
    assert prior_types_text() == "'wavelet' or 'pnp'"
    with pytest.raises(ValueError, match="did you mean 'wavelet'"):
        parse_prior({"type": "wavlet"})


def test_points_run_with_every_seed() -> None:
    """``sweep.points``: a configuration without its seed runs once per seed, after the grid;
    a point that writes a seed, or names an unknown prior, is refused with its key."""
    raw = {
        "priors": {"l1": {"type": "wavelet", "levels": 2}},
        "sweep": {
            "priors": ["l1"],
            "estimators": ["deq"],
            "seeds": [0, 3],
            "points": [{"prior": "l1", "estimator": "rjfb", "depth": 2, "restarts": 1}],
            "extra_trials": [{"prior": "l1", "estimator": "jfb", "seed": 7}],
        },
    }
    cfg = parse_params(raw)
    names = [t.name for t in cfg.trials()]
    # trials get the study as a dump: it validates back to the same trials
    assert StudyConfig.model_validate(cfg.model_dump(mode="json")).trials() == cfg.trials()
    assert names == [
        "l1-deq-s0",
        "l1-deq-s3",
        "l1-rjfb-K2-T1-s0",
        "l1-rjfb-K2-T1-s3",
        "l1-jfb-s7",
    ]
    seeded = {
        **raw,
        "sweep": {**raw["sweep"], "points": [{"prior": "l1", "estimator": "jfb", "seed": 1}]},
    }
    with pytest.raises(
        ConfigError, match=r"sweep\.points\[0\]\.seed: a point runs with every seed"
    ):
        parse_params(seeded)
    unknown = {**raw, "sweep": {**raw["sweep"], "points": [{"prior": "l2", "estimator": "jfb"}]}}
    with pytest.raises(ConfigError, match=r"sweep\.points\[0\]\.prior: .*'l2'"):
        parse_params(unknown)
