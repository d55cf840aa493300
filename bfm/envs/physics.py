"""MuJoCo models of the three domains, and the changed-dynamics multiplier."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from dm_control.suite import cheetah, common, quadruped, walker

from bfm.envs.specs import check_domain, check_multiplier

# Quadruped: every task is rolled out in the flat-floor "stand" model (floor half-size
# 20 s x 0.5 m/s = 10, no terrain geom, no rangefinders, 78-dim observation), as the reference
# code does. The heightfield asset survives, so escape's radius (hfield size 30) is defined.
QUADRUPED_FLOOR_SIZE = 10.0


@contextlib.contextmanager
def _absl_filtered(text: str) -> Iterator[None]:
    """Drops absl log records containing ``text`` (a known, harmless dm_control warning)."""
    absl_logger = logging.getLogger("absl")

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


def make_physics(domain: str, multiplier: float = 1.0):
    """Build a fresh dm_control Physics for ``domain`` with masses and dampings scaled.

    Args:
        domain: walker, cheetah or quadruped.
        multiplier: changed-dynamics factor m > 0 (see ``scale_dynamics``).

    Returns:
        The domain's dm_control Physics subclass (walker.Physics, cheetah.Physics or
        quadruped.Physics), so dm_control's own task classes run on it.
    """
    check_domain(domain)
    m = check_multiplier(multiplier)
    if domain == "walker":
        physics = walker.Physics.from_xml_string(*walker.get_model_and_assets())
    elif domain == "cheetah":
        physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
    else:
        xml = quadruped.make_model(floor_size=QUADRUPED_FLOOR_SIZE)
        with _absl_filtered("settotalmass"):  # dm_control's own quadruped XML uses it
            physics = quadruped.Physics.from_xml_string(xml, common.ASSETS)
    scale_dynamics(physics, m)
    return physics


def scale_dynamics(physics, multiplier: float) -> None:
    """Scale every body mass and every dof damping of ``physics.model`` by ``multiplier``, in place.

    ``body_subtreemass`` (a constant MuJoCo derives from the masses at compile time) is scaled
    too: MuJoCo divides by it to get subtree centres of mass and subtree velocities, which the
    rewards read, so leaving it stale would scale the measured speeds by m. Inertias are left
    alone, as in the reference code.

    Args:
        physics: a dm_control Physics.
        multiplier: m > 0; 1.0 leaves the model untouched.
    """
    m = check_multiplier(multiplier)
    if m == 1.0:
        return
    model = physics.model
    model.body_mass[:] *= m
    model.body_subtreemass[:] *= m
    model.dof_damping[:] *= m
