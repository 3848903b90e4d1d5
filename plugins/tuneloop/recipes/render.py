"""Turn a recipe template plus overrides into a validated, fully resolved recipe.

Steps: load the YAML (remembering lines) -> apply ``key.path=value`` overrides -> resolve the
``${...}`` interpolations Nova recipes use -> pick the recipe model from the method and the
model's layout -> validate fields -> apply contextual rules. Every problem found along the way is
reported at once, located in the template or in the override that caused it.

The rendered output is the user's own document with overrides applied and interpolations
resolved, not a dump of the model: fields the user did not write stay unwritten (the service
applies its own defaults), and values keep the spelling the service expects.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tuneloop.documents import (
    Document,
    Loc,
    dump_yaml,
    format_loc,
    load_document,
    parse_loc,
    parse_scalar,
    problems_from_validation_error,
)
from tuneloop.errors import ConfigError, Problem, RecipeError
from tuneloop.recipes.catalog import Method, ModelSpec, Technique, model_spec
from tuneloop.recipes.cpt import Nova1CptRecipe, Nova2CptRecipe
from tuneloop.recipes.evaluation import EvalRecipe
from tuneloop.recipes.rft import RftRecipe
from tuneloop.recipes.rules import RecipeContext, check_recipe, technique_of
from tuneloop.recipes.sft import Nova1SftRecipe, Nova2SftRecipe

Locate = Callable[..., Problem]
"""``locate(loc, message, **problem_fields)``: the Problem at recipe path ``loc``, placed where the
user wrote it (see _locator)."""

RECIPE_MODELS: dict[tuple[Method | None, str], type[BaseModel]] = {
    (Method.SFT, "nova-1"): Nova1SftRecipe,
    (Method.SFT, "nova-2"): Nova2SftRecipe,
    (Method.CPT, "nova-1"): Nova1CptRecipe,
    (Method.CPT, "nova-2"): Nova2CptRecipe,
    (Method.RFT, "nova-2"): RftRecipe,
    (None, "nova-1"): EvalRecipe,
    (None, "nova-2"): EvalRecipe,
}


# Where each layout keeps its peak learning rate (a rollback round scales it).
LEARNING_RATE_PATHS: dict[type[BaseModel], str] = {
    Nova1SftRecipe: "training_config.model.optim.lr",
    Nova1CptRecipe: "training_config.model.optim.lr",
    Nova2SftRecipe: "training_config.optim_config.lr",
    Nova2CptRecipe: "training_config.optim.lr",
    RftRecipe: "training_config.trainer.optim_config.lr",
}


class RecipeWarning(UserWarning):
    """A recipe that will run, but probably not as intended."""


@dataclass
class RenderedRecipe:
    """A recipe ready to submit: the resolved document and its validated model."""

    data: dict[str, Any]
    model: BaseModel
    method: Method | None
    """The training method, or None for an evaluation recipe."""
    spec: ModelSpec
    source: str
    warnings: list[Problem] = field(default_factory=list)

    @property
    def technique(self) -> Technique:
        return technique_of(self.model)

    @property
    def model_type(self) -> str:
        return self.spec.model_type

    @property
    def kind(self) -> str:
        """``sft``, ``cpt``, ``rft`` or ``eval``."""
        return self.method.value if self.method else "eval"

    @property
    def learning_rate_path(self) -> str | None:
        """Dotted path of the peak learning rate; None for evaluation recipes."""
        return LEARNING_RATE_PATHS.get(type(self.model))

    @property
    def learning_rate(self) -> float | None:
        """The peak learning rate in effect (the model's default when the file omits it)."""
        if self.learning_rate_path is None:
            return None
        value: Any = self.model
        for part in self.learning_rate_path.split("."):
            value = getattr(value, part)
        return float(value)

    def to_yaml(self) -> str:
        return dump_yaml(self.data)


# --- overrides ---------------------------------------------------------------------------------


def parse_set_options(items: Iterable[str]) -> dict[str, Any]:
    """``["training_config.max_steps=200"]`` -> ``{"training_config.max_steps": 200}``."""
    overrides: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", key):
            problems.append(
                Problem(
                    "",
                    f"cannot read {item!r}",
                    source="--set",
                    allowed="key.path=value, e.g. training_config.max_steps=200",
                )
            )
            continue
        try:
            overrides[key] = parse_scalar(value, name=key)
        except ConfigError as exc:  # a value past the document limits, named by its key
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return overrides


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep copy of ``data`` with each dotted path set, creating mappings along the way."""
    result = copy.deepcopy(data)
    for dotted, value in overrides.items():
        target: Any = result
        parts = dotted.split(".")
        for index, part in enumerate(parts[:-1]):
            key: Any = int(part) if isinstance(target, list) and part.isdigit() else part
            if isinstance(target, dict):
                if not isinstance(target.get(key), (dict, list)):
                    target[key] = {}
                target = target[key]
            elif isinstance(target, list) and isinstance(key, int) and key < len(target):
                target = target[key]
            else:
                raise ConfigError(
                    [
                        Problem(
                            ".".join(parts[: index + 1]),
                            "cannot set a key inside a value that is not a mapping",
                            source="--set",
                        )
                    ]
                )
        last: Any = parts[-1]
        if isinstance(target, list) and last.isdigit() and int(last) < len(target):
            target[int(last)] = copy.deepcopy(value)
        elif isinstance(target, dict):
            target[last] = copy.deepcopy(value)
        else:
            raise ConfigError(
                [
                    Problem(
                        dotted,
                        "cannot set a key inside a value that is not a mapping",
                        source="--set",
                    )
                ]
            )
    return result


# --- interpolations ----------------------------------------------------------------------------

_WHOLE = re.compile(r"^\$\{([^{}]+)\}$")
_INNER = re.compile(r"\$\{([^{}]+)\}")


def resolve_interpolations(data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[Loc, str]]]:
    """Resolve OmegaConf-style ``${path}``, ``${recipes.path}`` and ``${oc.select:path,default}``.

    Returns the resolved copy and (location, message) for each interpolation that cannot be
    resolved. Other resolvers are reported rather than guessed at.
    """
    errors: list[tuple[Loc, str]] = []

    def lookup(expr: str, loc: Loc, depth: int) -> Any:
        expr = expr.strip()
        default: Any = _MISSING
        if expr.startswith("oc.select:"):
            expr, comma, fallback = expr.removeprefix("oc.select:").partition(",")
            if comma:
                default = parse_scalar(fallback.strip())
        elif ":" in expr:
            errors.append((loc, f"unsupported interpolation ${{{expr}}}"))
            return None
        path = expr.strip().removeprefix("recipes.").split(".")
        node: Any = data
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                if default is not _MISSING:
                    return default
                errors.append((loc, f"${{{expr}}} refers to {'.'.join(path)}, which is not set"))
                return None
        return resolve(node, loc, depth + 1)

    def resolve(value: Any, loc: Loc, depth: int = 0) -> Any:
        if depth > 20:
            errors.append((loc, "interpolation refers back to itself"))
            return None
        if isinstance(value, dict):
            return {k: resolve(v, (*loc, k), depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, (*loc, i), depth) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            whole = _WHOLE.match(value)
            if whole:
                return lookup(whole.group(1), loc, depth)
            return _INNER.sub(lambda m: str(lookup(m.group(1), loc, depth)), value)
        return value

    return resolve(data, ()), errors


_MISSING = object()


# --- method detection --------------------------------------------------------------------------


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``data[key]`` when it is a mapping, else an empty one."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def detect_method(data: Mapping[str, Any], source: str) -> Method | None:
    """The training method of a recipe document, or None for evaluation.

    Raises ConfigError when the document does not say: Nova 1 SFT and CPT recipes share a layout,
    and only `peft` (SFT) or the file name tells them apart.
    """
    if "evaluation" in data:
        return None
    run = _section(data, "run")
    tc = _section(data, "training_config")
    if "rollout" in tc or any(
        k in run for k in ("reward_lambda_arn", "generation_replicas", "rollout_worker_replicas")
    ):
        return Method.RFT
    task_type = tc.get("task_type")
    if task_type in ("sft", "cpt"):
        return Method(task_type)
    model = _section(tc, "model")
    if "peft" in tc or "peft" in model or "optim_config" in tc:
        return Method.SFT
    stem = Path(source).stem.lower()
    if "cpt" in stem or "pretrain" in stem:
        return Method.CPT
    if "sft" in stem:
        return Method.SFT
    raise ConfigError(
        [
            Problem(
                "training_config",
                "cannot tell whether this is an SFT or a CPT recipe",
                source=source,
                fix="add training_config.task_type (sft or cpt), or pass --kind",
            )
        ]
    )


def recipe_model(method: Method | None, spec: ModelSpec) -> type[BaseModel] | None:
    return RECIPE_MODELS.get((method, spec.recipe_shape))


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where an override came from, for error messages."""

    source: str
    line: int | None = None
    path: str | None = None
    """The field the user wrote, when it differs from the recipe field it fills."""


def render_recipe(
    template: str | Path | Document,
    overrides: Mapping[str, Any] | None = None,
    *,
    method: Method | str | None = "detect",
    context: RecipeContext | None = None,
    origins: Mapping[str, Origin] | None = None,
) -> RenderedRecipe:
    """Render and validate a recipe; raise RecipeError listing every problem found.

    ``method`` is the stage's method when the caller knows it (campaigns do); "detect" reads it
    from the document. ``origins`` maps override paths to where they were written.
    """
    context = context or RecipeContext()
    try:
        document = template if isinstance(template, Document) else load_document(template)
    except ConfigError as exc:
        raise RecipeError(exc.problems) from None
    _refuse_non_recipe(document)
    overrides = dict(overrides or {})
    origins = dict(origins or {})
    for key in overrides:
        origins.setdefault(key, Origin("--set"))
    locate = _locator(document, origins)

    try:
        data = apply_overrides(document.data, overrides)
    except ConfigError as exc:
        raise RecipeError(exc.problems) from None
    data, interpolation_errors = resolve_interpolations(data)
    if interpolation_errors:
        raise RecipeError([locate(loc, msg) for loc, msg in interpolation_errors])

    method = _stage_method(method, data, document.source)
    spec = _spec_or_raise(data, locate)
    model_cls = recipe_model(method, spec)
    if model_cls is None:
        what = method.value.upper() if method else "evaluation"
        raise RecipeError(
            [locate(("run", "model_type"), f"{spec.display_name} has no {what} recipe")]
        )
    try:
        model = model_cls.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, model_cls)
        raise RecipeError([_relocate(p, locate) for p in problems]) from None

    found = check_recipe(model, method, context)
    if found.errors:
        raise RecipeError(
            [locate(f.loc, f.message, allowed=f.allowed, fix=f.fix) for f in found.errors]
        )
    recipe_warnings = [
        locate(f.loc, f.message, allowed=f.allowed, fix=f.fix) for f in found.warnings
    ]
    for problem in recipe_warnings:
        warnings.warn(problem.format(), RecipeWarning, stacklevel=2)
    return RenderedRecipe(
        data=data,
        model=model,
        method=method,
        spec=spec,
        source=document.source,
        warnings=recipe_warnings,
    )


RECIPE_SECTIONS = tuple(
    dict.fromkeys(name for m in RECIPE_MODELS.values() for name in m.model_fields)
)
"""The top-level keys a recipe is made of (``run``, ``training_config``, ``evaluation``, ...)."""


def _refuse_non_recipe(document: Document) -> None:
    """One problem, and none of the file's keys shown, for a YAML mapping that is no recipe.

    Listing every unknown key of such a file (a credentials file, someone's notes) would print
    its content line by line; a recipe has at least one recipe section."""
    if any(key in RECIPE_SECTIONS for key in document.data):
        return
    raise RecipeError(
        [
            Problem(
                "",
                f"not a recipe: none of its {len(document.data)} top-level keys is a recipe "
                "section",
                source=document.source,
                line=document.lines.get(()),
                allowed=", ".join(RECIPE_SECTIONS),
                fix="name a recipe template, such as one under recipes/nova or recipes/local",
            )
        ]
    )


def _locator(document: Document, origins: Mapping[str, Origin]) -> Locate:
    """Where a problem at a recipe path was written: the override that set it, else the file."""

    def locate(loc: Loc, message: str, **kwargs: Any) -> Problem:
        # Compared part by part, not as text: a key written ``a[0]`` prints as ["a[0]"].
        parts = tuple(str(part) for part in loc)
        in_file = tuple(loc) in document.lines
        for key, origin in origins.items():
            path = tuple(key.split("."))
            inside = parts[: len(path)] == path
            # A parent the override created (the file never had it) is the override's doing too.
            created = not in_file and len(path) > len(parts) and path[: len(parts)] == parts
            if inside or created:
                return Problem(
                    origin.path or format_loc(loc),
                    message,
                    source=origin.source,
                    line=origin.line,
                    **kwargs,
                )
        return document.problem(loc, message, **kwargs)

    return locate


def _stage_method(
    method: Method | str | None, data: Mapping[str, Any], source: str
) -> Method | None:
    """The method the caller named, or (for "detect") the one the document shows."""
    if method == "detect":
        try:
            return detect_method(data, source)
        except ConfigError as exc:
            raise RecipeError(exc.problems) from None
    return Method(method) if isinstance(method, str) else method


def _relocate(problem: Problem, locate: Locate) -> Problem:
    loc = parse_loc(problem.path)
    return locate(loc, problem.message, allowed=problem.allowed, fix=problem.fix)


def _spec_or_raise(data: Mapping[str, Any], locate: Locate) -> ModelSpec:
    run = data.get("run")
    model_type = run.get("model_type") if isinstance(run, dict) else None
    if not isinstance(model_type, str):
        raise RecipeError([locate(("run", "model_type"), "required field is missing")])
    spec = model_spec(model_type)
    if spec is None:
        from tuneloop.recipes.catalog import MODELS

        raise RecipeError(
            [
                locate(
                    ("run", "model_type"),
                    f"unknown model_type {model_type!r}",
                    allowed=", ".join(MODELS),
                )
            ]
        )
    return spec
