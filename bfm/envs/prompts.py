"""Rewards a user asks a trained model for: built-in tasks, formulas, Python functions, goals.

Every task reward of this project is a function of a few named reward features of the state
(``FEATURES``, documented with units in ``FEATURE_DOCS``). A prompt is one more such function,
vectorised over N states:

- a built-in task (``TaskReward``): the domain's own reward, as the environment scores it;
- a formula (``formula_reward``): one line over the feature names, evaluated by numexpr (never
  Python's ``eval``), with ``tolerance(x, lower, upper, margin=..., sigmoid=..., value_at_margin=...)``
  (dm_control's smooth bump, the building block of the built-in rewards) and numexpr's functions;
- a Python function (``file_reward``, ``file.py:name``): the user's own code, called with the
  features it names as keyword arguments (numpy arrays [N]);
- a goal (``GoalReward``): 1 on every step whose posture (the observation's non-velocity entries)
  lies within a distance of the goal's, so an episode's return counts the steps spent at the goal.

The same reward labels the dataset's windows for z inference (from the stored physics states) and
scores the rollouts online, so a prompt is scored by the reward it asked for.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numexpr
import numpy as np
from dm_control.utils.rewards import tolerance

from bfm.envs.pomdp import OCCLUDED_INDICES
from bfm.envs.rewards import FEATURES, rewards_from_features
from bfm.envs.specs import DOMAINS, check_task

# What each reward feature measures, with its unit (the built-in tasks' ingredients).
FEATURE_DOCS: dict[str, dict[str, str]] = {
    "walker": {
        "torso_height": "height of the torso above the floor, m (standing: about 1.3)",
        "torso_upright": "cosine of the torso's tilt from vertical, -1 (upside down) .. 1 (upright)",
        "horizontal_velocity": "forward velocity of the centre of mass, m/s (backwards < 0)",
        "angmomentum": "angular momentum of the body about the lateral axis, kg m^2/s (forward flip > 0)",
    },
    "cheetah": {
        "speed": "forward velocity of the torso subtree, m/s (backwards < 0)",
    },
    "quadruped": {
        "torso_upright": "cosine of the torso's tilt from vertical, -1 .. 1",
        "velocity_x": "torso velocity along its forward axis (velocimeter), m/s",
        "velocity_y": "torso velocity along its lateral axis, m/s",
        "velocity_z": "torso velocity along its vertical axis, m/s",
        "com_height": "height of the centre of mass, m",
        "workspace_x": "x of the workspace site (torso) from the origin, m",
        "workspace_y": "y of the workspace site from the origin, m",
        "workspace_z": "z of the workspace site, m",
        "terrain_size": "half-size of the heightfield, m (a constant, 30: escape's radius)",
    },
}

# numexpr's element-wise functions a formula may call, besides ``tolerance``.
FORMULA_FUNCTIONS = (
    "where", "abs", "exp", "expm1", "log", "log1p", "log10", "sqrt", "sin", "cos", "tan",
    "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "floor", "ceil", "fmod",
)  # fmt: skip
FORMULA_CONSTANTS = {"inf": math.inf, "pi": math.pi, "e": math.e}
TOLERANCE_KEYWORDS = ("lower", "upper", "margin", "sigmoid", "value_at_margin")
SIGMOIDS = (
    "gaussian",
    "hyperbolic",
    "long_tail",
    "reciprocal",
    "cosine",
    "linear",
    "quadratic",
    "tanh_squared",
)


class PromptError(ValueError):
    """A reward, formula or goal that cannot be used; the message says what is accepted."""


class FeatureReward:
    """A reward of the domain's named features, vectorised over states.

    Args:
        domain: walker, cheetah or quadruped.
        name: the prompt's name (a column of the results).
        fn: ``features -> rewards``: a dict of feature name -> float64 [N] to rewards [N].
        source: what the user wrote (formula, ``file.py:function`` or the task name).
    """

    def __init__(
        self, domain: str, name: str, fn: Callable[[dict[str, np.ndarray]], np.ndarray], source: str
    ):
        self.domain, self.name, self.fn, self.source = domain, name, fn, source

    def __call__(self, features: np.ndarray, observation: np.ndarray | None = None) -> np.ndarray:
        """Rewards float64 [N] of feature rows [N, k] (``FEATURES[domain]`` order).

        Raises:
            PromptError: the function raised, or returned the wrong shape or a non-finite value.
        """
        f = np.asarray(features, dtype=np.float64)
        columns = dict(zip(FEATURES[self.domain], f.T, strict=True))
        try:
            out = self.fn(columns)
        except PromptError:
            raise
        except Exception as error:  # the user's code: any exception is a bad prompt, named
            raise PromptError(
                f"reward {self.source!r} raised {type(error).__name__}: {error}; fix the reward (it gets "
                "arrays of one value per state)"
            ) from error
        try:
            out = np.broadcast_to(np.asarray(out, dtype=np.float64), (len(f),))
        except (ValueError, TypeError):
            shape = getattr(out, "shape", type(out).__name__)
            raise PromptError(
                f"reward {self.source!r} returned {shape} for {len(f)} states; it must return one number per "
                f"state (an array [{len(f)}] or a scalar)"
            ) from None
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out))[0])
            raise PromptError(
                f"reward {self.source!r} returned a non-finite value ({out[bad]}) for state {bad} "
                f"({', '.join(f'{k}={v[bad]:.3g}' for k, v in columns.items())}); rewards must be finite"
            )
        return out


def task_reward(domain: str, task: str) -> FeatureReward:
    """The built-in reward of ``task`` as a prompt (the environment's own reward)."""
    check_task(domain, task)
    return FeatureReward(
        domain, task, lambda c: rewards_from_features(domain, (task,), _matrix(domain, c))[task], task
    )


def _matrix(domain: str, columns: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([columns[name] for name in FEATURES[domain]], axis=-1)


def accepted_names(domain: str) -> str:
    """The names a formula of ``domain`` may use, for messages."""
    return (
        f"features {', '.join(FEATURES[domain])}; functions tolerance, {', '.join(FORMULA_FUNCTIONS)}; "
        f"constants {', '.join(FORMULA_CONSTANTS)}"
    )


def formula_reward(domain: str, text: str, name: str = "formula") -> FeatureReward:
    """A reward from a one-line formula over the feature names, e.g.
    ``(torso_height > 1.3) & (abs(horizontal_velocity) < 0.2)`` or
    ``tolerance(torso_height, 1.2, inf, margin=0.6) * tolerance(-horizontal_velocity, 1, inf, margin=0.5)``.

    The formula is parsed (Python expression syntax, never executed): only numbers, the feature
    names, ``inf`` / ``pi`` / ``e``, arithmetic, comparisons, ``&`` ``|`` ``~``, the functions of
    ``FORMULA_FUNCTIONS`` and ``tolerance`` are allowed. Each ``tolerance`` call is computed with
    dm_control's ``tolerance`` (constant bounds and settings; the default sigmoid is gaussian,
    value_at_margin 0.1); numexpr evaluates the rest. Booleans become 0 / 1.

    Raises:
        PromptError: a syntax error or a name or construct that is not allowed (the message lists
            what is).
    """
    if domain not in FEATURES:
        raise PromptError(f"unknown domain {domain!r}; accepted: {', '.join(FEATURES)}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise PromptError(
            f"formula {text!r} does not parse ({error.msg}); accepted: {accepted_names(domain)}"
        ) from None
    calls: list[tuple[str, ast.expr, dict[str, object]]] = []
    body = _FormulaRewriter(domain, text, calls).visit(tree.body)
    expression = ast.unparse(body)

    def fn(columns: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(columns.values())))
        values: dict[str, object] = {**columns, **FORMULA_CONSTANTS}
        for var, argument, settings in calls:  # innermost calls first: arguments may use earlier ones
            x = _evaluate(ast.unparse(argument), values, n)
            values[var] = tolerance(x, **settings)
        return _evaluate(expression, values, n)

    try:  # a formula numexpr cannot evaluate fails now, not at the first episode
        fn(dict.fromkeys(FEATURES[domain], np.ones(1)))
    except (ValueError, TypeError, KeyError, SyntaxError, NotImplementedError, ArithmeticError) as error:
        raise PromptError(
            f"formula {text!r} cannot be evaluated ({error}); accepted: {accepted_names(domain)}"
        ) from None
    return FeatureReward(domain, name, fn, text)


def _evaluate(expression: str, values: dict[str, object], n: int) -> np.ndarray:
    names = {node.id for node in ast.walk(ast.parse(expression, mode="eval")) if isinstance(node, ast.Name)}
    local = {k: v for k, v in values.items() if k in names}
    out = numexpr.evaluate(expression, local_dict=local, global_dict={})
    return np.broadcast_to(np.asarray(out, dtype=np.float64), (n,))


class _FormulaRewriter(ast.NodeTransformer):
    """Checks every node of a formula against what is allowed and replaces each ``tolerance(...)``
    call by a variable (``calls`` gets (variable, argument, settings) in evaluation order)."""

    ALLOWED = (ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Constant, ast.Load, ast.Call, ast.keyword)
    OPERATORS = (
        ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.USub, ast.UAdd, ast.BitAnd, ast.BitOr,
        ast.Invert, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq,
    )  # fmt: skip

    def __init__(self, domain: str, text: str, calls: list):
        self.domain, self.text, self.calls = domain, text, calls

    def fail(self, what: str) -> None:
        raise PromptError(f"formula {self.text!r}: {what}; accepted: {accepted_names(self.domain)}")

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, self.OPERATORS):
            return node
        if not isinstance(node, self.ALLOWED):
            hint = " (use & and | for and / or)" if isinstance(node, ast.BoolOp) else ""
            self.fail(f"{type(node).__name__} is not allowed{hint}")
        return super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in FEATURES[self.domain] and node.id not in FORMULA_CONSTANTS:
            self.fail(f"unknown name {node.id!r}")
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if not isinstance(node.value, int | float) or isinstance(node.value, bool):
            self.fail(f"the constant {node.value!r} is not a number")
        # floats only: numexpr folds integer constants with Python itself (9**9**9 would not end)
        return ast.copy_location(ast.Constant(float(node.value)), node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if not isinstance(node.func, ast.Name) or node.func.id not in ("tolerance", *FORMULA_FUNCTIONS):
            self.fail(f"unknown function {ast.unparse(node.func)!r}")
        if node.func.id != "tolerance":
            if node.keywords:
                self.fail(f"{node.func.id}() takes no keyword arguments")
            node.args = [self.visit(a) for a in node.args]
            return node
        return self._tolerance(node)

    def _tolerance(self, node: ast.Call) -> ast.AST:
        if not node.args or len(node.args) > 3:
            self.fail(
                "tolerance(x, lower, upper, margin=0, sigmoid='gaussian', value_at_margin=0.1) takes x and bounds"
            )
        settings: dict[str, object] = {}
        positional = dict(zip(TOLERANCE_KEYWORDS, node.args[1:], strict=False))
        keywords = {k.arg: k.value for k in node.keywords}
        for key in keywords:
            if key not in TOLERANCE_KEYWORDS or key in positional:
                self.fail(f"tolerance() got an unexpected or repeated argument {key!r}")
        for key, value in {**positional, **keywords}.items():
            settings[key] = self._constant(value, key)
        lower, upper = settings.pop("lower", 0.0), settings.pop("upper", 0.0)
        if settings.get("sigmoid", "gaussian") not in SIGMOIDS:
            self.fail(f"tolerance sigmoid {settings['sigmoid']!r} is not one of {', '.join(SIGMOIDS)}")
        if not float(lower) <= float(upper) or float(settings.get("margin", 0.0)) < 0:
            self.fail("tolerance needs lower <= upper and margin >= 0")
        argument = self.visit(node.args[0])
        var = f"_tolerance{len(self.calls)}"
        self.calls.append((var, argument, {"bounds": (float(lower), float(upper)), **settings}))
        return ast.copy_location(ast.Name(id=var, ctx=ast.Load()), node)

    def _constant(self, node: ast.expr, key: str) -> object:
        """A constant setting of tolerance: a number (inf, pi, e and signs allowed) or, for sigmoid, a string."""
        if key == "sigmoid":
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            self.fail("tolerance's sigmoid must be a quoted name such as 'linear'")
        sign = 1.0
        while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            sign, node = (-sign if isinstance(node.op, ast.USub) else sign), node.operand
        if isinstance(node, ast.Name) and node.id in FORMULA_CONSTANTS:
            return sign * FORMULA_CONSTANTS[node.id]
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return sign * float(node.value)
        self.fail(f"tolerance's {key} must be a constant number")
        return None


def file_reward(domain: str, spec: str) -> FeatureReward:
    """A reward from the user's Python function: ``path/to/file.py:function``.

    The file is imported as a module (the user's own code, run as such); the function is called
    with the features it names as keyword arguments (numpy float64 arrays [N]; ``**features``
    receives all of them) and returns rewards [N]. ``from bfm.envs.prompts import tolerance`` gives
    dm_control's bump function.

    Raises:
        PromptError: no such file or function, the file fails to import, or the function names an
            argument that is not a feature.
    """
    path_text, _, function = spec.rpartition(":")
    path = Path(path_text)
    if not path_text or not function:
        raise PromptError(f"reward file {spec!r}: expected FILE.py:FUNCTION")
    if not path.is_file():
        raise PromptError(f"reward file {path} does not exist (expected FILE.py:FUNCTION)")
    module_name = f"bfm_prompt_{path.stem}_{abs(hash(str(path.resolve())))}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as error:  # the user's module: report any failure to import it as bad input
        raise PromptError(
            f"reward file {path} failed to import: {type(error).__name__}: {error}; fix the file (it is "
            "imported as a module)"
        ) from error
    fn = getattr(module, function, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module_name]
        raise PromptError(
            f"{path} has no function {function!r}; functions in it: {', '.join(found) or 'none'}"
        )
    parameters = inspect.signature(fn).parameters.values()
    takes_all = any(p.kind is p.VAR_KEYWORD for p in parameters)
    wanted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [w for w in wanted if w not in FEATURES[domain]]
    if unknown:
        raise PromptError(
            f"{spec}: argument(s) {', '.join(unknown)} are not {domain} features; accepted: {', '.join(FEATURES[domain])}"
        )

    def call(columns: dict[str, np.ndarray]) -> np.ndarray:
        return fn(**(columns if takes_all else {w: columns[w] for w in wanted}))

    return FeatureReward(domain, function, call, spec)


def parse_reward(domain: str, spec: str, name: str | None = None) -> FeatureReward:
    """``[NAME=]file.py:function`` (an existing ``.py`` file) or ``[NAME=]formula``; see ``file_reward``
    and ``formula_reward``. ``NAME=`` names the prompt (default: the function's name, or ``formula``)."""
    named = re.match(r"^\s*([A-Za-z_]\w*)\s*=(?!=)(.*)$", spec, re.DOTALL)
    if named:
        name, spec = name or named.group(1), named.group(2).strip()
    path_text = spec.rpartition(":")[0]
    if path_text.endswith(".py"):
        reward = file_reward(domain, spec)
        return FeatureReward(domain, name or reward.name, reward.fn, reward.source)
    return formula_reward(domain, spec, name or "formula")


class GoalReward:
    """1 on every step whose posture is within ``threshold`` of the goal's, else 0.

    The posture is the observation's non-velocity entries (``OCCLUDED_INDICES``: walker's body
    orientations and torso height, cheetah's joint angles, ...), so the distance says how close the
    body's configuration is to the goal's wherever the body stands (the observations do not hold
    the horizontal position). Distances are Euclidean over those entries.

    Args:
        domain: walker, cheetah or quadruped.
        name: the prompt's name.
        goal_observation: the goal's uncorrupted observation [obs_dim].
        threshold: distance counted as reaching the goal.
        source: what the user wrote (``EPISODE:STEP`` or a file).
        window: [1, L_B, goal_dim] the goal as the agent's goal stream sees it (ending at the goal),
            for the agent's ``goal_z``; action_window: [1, L_B, action_dim] the actions taken there.
    """

    def __init__(
        self,
        domain: str,
        name: str,
        goal_observation: np.ndarray,
        threshold: float,
        source: str,
        window: np.ndarray | None = None,
        action_window: np.ndarray | None = None,
    ):
        goal = np.asarray(goal_observation, dtype=np.float64).reshape(-1)
        if goal.shape != (DOMAINS[domain].obs_dim,):
            raise PromptError(
                f"a {domain} goal observation must have {DOMAINS[domain].obs_dim} entries, got {goal.shape}"
            )
        if not threshold > 0:
            raise PromptError(f"goal threshold must be > 0, got {threshold}")
        self.domain, self.name, self.source, self.threshold = domain, name, source, float(threshold)
        self.indices = OCCLUDED_INDICES[domain]
        self.goal = goal[self.indices]  # [p]
        self.window, self.action_window = window, action_window

    def distance(self, observation: np.ndarray) -> np.ndarray:
        """Posture distance [N] of uncorrupted observations [N, obs_dim] to the goal."""
        posture = np.asarray(observation, dtype=np.float64)[..., self.indices]  # [N, p]
        return np.linalg.norm(posture - self.goal, axis=-1)

    def __call__(self, features: np.ndarray, observation: np.ndarray | None = None) -> np.ndarray:
        if observation is None:
            raise PromptError(
                f"goal {self.source!r} is scored from observations, not from reward features; pass the "
                "observations too"
            )
        return (self.distance(observation) < self.threshold).astype(np.float64)


__all__ = [
    "FEATURE_DOCS",
    "FORMULA_FUNCTIONS",
    "FeatureReward",
    "GoalReward",
    "PromptError",
    "file_reward",
    "formula_reward",
    "parse_reward",
    "task_reward",
    "tolerance",
]
