from __future__ import annotations

from pathlib import Path

import pytest

from ablation.errors import UserError
from ablation.sweep.config import load_sweep
from ablation.sweep.factors import Configuration
from ablation.sweep.sections import SeedRange
from ablation.sweep.stores import dialect, is_database, storage_problem

REPO = Path(__file__).resolve().parents[2]
BLOG = REPO / "sweeps" / "blog.yaml"

MINIMAL = """
study: {name: s}
data: {source: /data}
space:
  backbone: {choice: [cnn]}
"""


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        load_sweep(path, overrides or [])
    message = str(info.value)
    assert "\n" not in message
    return message


TPE = ["study.sampler=tpe", "study.trials=4", "study.seeds=[0]"]


def test_blog_sweep_is_the_blog_setting() -> None:
    sweep = load_sweep(BLOG)
    assert sweep.study.sampler == "grid" and sweep.study.adaptive == SeedRange(min=2, max=3)
    assert sweep.data.image_size == (160, 160) and sweep.data.batch_size == 32
    assert (sweep.train.optimizer, sweep.train.epochs) == ("adam", 20)
    assert sweep.data.source.endswith("cats_and_dogs_filtered.zip")
    assert set(sweep.space) == {"augment", "rotation", "flip", "preprocess", "backbone"}
    assert sweep.space["rotation"].when == {"augment": True}
    assert sweep.space["flip"].choice == ["horizontal_and_vertical"]  # the blog's RandomFlip()


def test_defaults_fill_unnamed_sections(tmp_path: Path) -> None:
    sweep = load_sweep(sweep_file(tmp_path, MINIMAL))
    assert sweep.train.epochs == 20 and sweep.model.weights == "imagenet"
    assert sweep.experiment_name == "s"
    assert sweep.tracking.tracking_uri().startswith("sqlite:///")
    assert sweep.tracking.tracking_uri().endswith("mlruns/mlflow.db")
    assert sweep.study.storage_url().endswith("mlruns/optuna.journal")


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    sweep = load_sweep(
        BLOG,
        [
            "train.epochs=1",
            "data.source=../shared/data/cats_and_dogs",
            "data.limit_per_class=20",
            "space.augment.choice=[true]",
            "study.seeds=[1, 2]",
            "tracking.uri=sqlite:///x.db",
        ],
    )
    assert sweep.train.epochs == 1
    assert sweep.data.source == "../shared/data/cats_and_dogs"
    assert sweep.data.limit_per_class == 20
    assert sweep.space["augment"].choice == [True]
    assert sweep.study.seeds == [1, 2]
    assert sweep.tracking.tracking_uri() == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["train.epochz=1"],
            "unknown key 'train.epochz'; allowed: epochs, optimizer, learning_rate",
        ),
        (["train.epochs=many"], "train.epochs: Input should be a valid integer"),
        (["train.epochs=0"], "train.epochs: Input should be greater than 0"),
        (
            ["train.optimizer=adagrad"],
            "train.optimizer: Input should be 'adam', 'sgd' or 'rmsprop'",
        ),
        (["study.sampler=bayes"], "study.sampler: Input should be 'grid', 'tpe' or 'random'"),
        (["study.pruner=hyperband"], "study.pruner: Input should be 'none' or 'median'"),
        (["study.sampler=tpe"], "sampler 'tpe' needs 'trials: N'"),
        (["study.trials=3"], "'trials' is for the tpe and random samplers"),
        (
            ["space.backbone.choice=[vgg16]"],
            "'vgg16' is not allowed (allowed: cnn, mobilenet_v2, mobilenet_v3_small",
        ),
        (["space.rotation.choice=[2.0]"], "rotation: 2.0 is not allowed (a number >= 0 and <= 1)"),
        (["space.augment.choice=[]"], "space.augment.choice: List should have at least 1 item"),
        (["space.augment.choice=[true, true]"], "value True is listed twice"),
        (["space.depth.choice=[1]"], "unknown factor 'depth'; allowed: backbone, preprocess"),
        (
            ["space.rotation.when={pooling: max}"],
            "rotation.when names 'pooling', which is not in the space",
        ),
        (
            ["space.rotation.when={augment: maybe}"],
            "augment='maybe' is not one of augment's choices",
        ),
        (
            ["space.augment.choise=[true]"],
            "unknown key 'space.augment.choise'; allowed: choice, low, high, log, when",
        ),
        (
            ["space.learning_rate={low: 0.0001, high: 0.01, log: true}"],
            "space.learning_rate: a grid needs a choice list for every factor",
        ),
        (
            [*TPE, "space.learning_rate={low: 0.01, high: 0.001}"],
            "'low' (0.01) must be below 'high' (0.001)",
        ),
        ([*TPE, "space.learning_rate={low: 0.01}"], "a range needs both 'low' and 'high'"),
        (
            [*TPE, "space.learning_rate={choice: [0.001], low: 0.1}"],
            "give either 'choice' or 'low'/'high'/'log', not both",
        ),
        (
            [*TPE, "space.label_smoothing={low: 0, high: 0.2, log: true}"],
            "a log-scale range needs 'low' above 0",
        ),
        ([*TPE, "space.pooling={low: 0, high: 1}"], "pooling: a range is for numeric factors"),
        (
            [*TPE, "space.fine_tune_layers={low: 1.5, high: 10}"],
            "fine_tune_layers: the range of an integer factor needs whole numbers",
        ),
        (
            [*TPE, "space.learning_rate={low: 0.0001, high: 2}"],
            "learning_rate: 2.0 is not allowed (a number > 0 and <= 1)",
        ),
        (
            [
                *TPE,
                "space.rotation.when={learning_rate: 0.1}",
                "space.learning_rate={low: 0.01, high: 0.2}",
            ],
            "rotation.when names 'learning_rate', a range; 'when' needs choices",
        ),
        (
            [*TPE, "study.try_first=[{augment: true, rotation: 0.3}]"],
            "study.try_first[0]: rotation=0.3 is not one of [0.1, 0.2]",
        ),
        (
            [*TPE, "study.try_first=[{augment: false, rotation: 0.1}]"],
            "study.try_first[0]: rotation is not a factor when augment=False",
        ),
        ([*TPE, "study.try_first=[{depth: 3}]"], "'depth' is not a factor of the space"),
        (["study.try_first=[{augment: true}]"], "'try_first' is for the tpe and random samplers"),
        (["space.dropout.choice=[1.0]"], "dropout: 1.0 is not allowed (a number >= 0 and < 1)"),
        (["data.image_size=[160]"], "data.image_size"),
        (["data.test_fraction=1.5"], "data.test_fraction: Input should be less than 1"),
        (
            ["bogus.key=1"],
            "unknown key 'bogus'; allowed: study, data, train, model, space, tracking",
        ),
        (["train=1"], "train: Input should be a valid dictionary"),
        (["train.epochs.x=1"], "train.epochs is a value, not a section"),
        (["nonsense"], "expected dotted.key=value"),
        (
            ["space.augment.choice=[true"],
            "--set 'space.augment.choice=[true': '[true' is not valid YAML (expected ',' or "
            "']', but got '<stream end>'); allowed: a YAML value such as 1, true, [a, b] or "
            '{k: v}, or a string in double quotes ("...")',
        ),
        (["data.source=a: b: c"], "'a: b: c' is not valid YAML (mapping values are not"),
        (
            ["study.storage=postgres://u:pw@db/optuna"],
            "study.storage: 'postgres://' is an alias SQLAlchemy refuses; write postgresql://",
        ),
        (
            ["study.storage=oracle://u:pw@db/optuna"],
            "study.storage: oracle:// is not a database every process can lock; allowed: a "
            "journal file path, or a database URL postgresql://, mysql://, mariadb:// or "
            "sqlite:///FILE, each with an optional +driver",
        ),
        (["study.storage=sqlite://"], "study.storage: a SQLite storage needs a file"),
        (["study.storage=db:optuna"], "study.storage: starts like a URL (scheme:) but has no '//'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides: list[str], expected: str) -> None:
    assert expected in error_of(BLOG, overrides)


def test_a_storage_is_told_by_its_scheme_and_driver() -> None:
    assert dialect("postgresql+psycopg2://h/d") == "postgresql"
    assert dialect("mysql+pymysql://h/d") == "mysql" and dialect("runs/optuna.journal") is None
    assert is_database("postgres://u:pw@h/d") and not is_database("runs/optuna.journal")
    for url in ("sqlite+pysqlite:///runs/o.db", "mariadb+mariadbconnector://u:pw@h/d", "o.journal"):
        assert storage_problem(url) is None, url
    for url in ("postgres://u:pw@h/d", "oracle+cx://u:pw@h/d", "https://u:pw@h", "sqlite://"):
        assert storage_problem(url) is not None, url


def test_a_storage_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATION_STORAGE", "postgres://u:pw@db/optuna")
    assert "'postgres://' is an alias" in error_of(BLOG)
    assert "pw" not in error_of(BLOG)


def test_a_range_is_sampled_by_tpe() -> None:
    sweep = load_sweep(BLOG, [*TPE, "space.learning_rate={low: 0.0001, high: 0.01, log: true}"])
    rate = sweep.space["learning_rate"]
    assert rate.is_range and (rate.low, rate.high, rate.log) == (0.0001, 0.01, True)


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "study: {name: s}\ndata:\n  source: [unclosed\nspace: {}\n")
    message = error_of(path)
    assert message.startswith(f"{path}:") and "YAML syntax error" in message
    line = int(message.split(":")[1])
    assert line in (3, 4)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    assert "no such sweep file" in error_of(tmp_path / "nope.yaml")
    assert "a sweep file is a mapping" in error_of(sweep_file(tmp_path, "- a\n- b\n"))


def test_missing_required_sections(tmp_path: Path) -> None:
    message = error_of(sweep_file(tmp_path, "study: {name: s}\n"))
    assert "data: missing (required)" in message and "space: missing (required)" in message


def test_when_cycle_is_refused(tmp_path: Path) -> None:
    from ablation.sweep.space import grid

    text = MINIMAL.replace(
        "  backbone: {choice: [cnn]}",
        "  augment: {choice: [true], when: {preprocess: none}}\n"
        "  preprocess: {choice: [none], when: {augment: true}}",
    )
    sweep = load_sweep(sweep_file(tmp_path, text))
    with pytest.raises(UserError, match="form a cycle"):
        grid(sweep.space)


def test_choices_defaults_are_the_blog_model1() -> None:
    assert Configuration() == Configuration(backbone="cnn", preprocess="none", augment=False)


def test_precision_must_be_a_policy_auto_or_one_per_backbone(tmp_path: Path) -> None:
    for value in ["auto", "mixed_bfloat16", "{cnn: mixed_bfloat16}"]:
        load_sweep(sweep_file(tmp_path, MINIMAL), [f"train.precision={value}"])
    message = error_of(sweep_file(tmp_path, MINIMAL), ["train.precision=bfloat16"])
    assert "train.precision: " in message
    assert "mixed_bfloat16" in message and "auto" in message
    message = error_of(sweep_file(tmp_path, MINIMAL), ["train.precision={resnet: float32}"])
    assert "resnet" in message and "mobilenet_v2" in message
    message = error_of(sweep_file(tmp_path, MINIMAL), ["train.precision={cnn: auto}"])
    assert "cnn: 'auto'" in message
    message = error_of(sweep_file(tmp_path, MINIMAL), ["train.mixed_precision=true"])
    assert "unknown key 'train.mixed_precision'" in message and "precision" in message
