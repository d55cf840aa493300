"""The training batch: the one contract between the sequence buffer (data/) and the agents.

Storage convention (ExORL): an episode holds rows 0..T (T = 1000). ``obs[i]`` is the observation
at row i, ``action[i]`` is the action that *produced* ``obs[i]`` from ``obs[i-1]`` (``action[0]``
is zero). A sampled transition has a storage index ``s`` in ``1..T-1`` (uniform episode, uniform
step; ``T-1`` so that the action taken at ``obs[s]`` exists), and means

    o_t = obs[s-1],  a_t = action[s],  o_{t+1} = obs[s].

Windows are stored one row longer than the context so that the current and the next-step
histories are slices of the same tensor (no second gather):

- ``obs_window[:, j]``          = obs-stream obs[s - L_F + j],            j = 0..L_F
- ``prev_action_window[:, j]``  = action[s - L_F + j] (the action that led to that obs)
- ``goal_window[:, j]``         = goal-stream obs[s - L_B + j],               j = 0..L_B
- ``goal_action_window[:, j]``  = action[s - L_B + j + 1] (the action taken *at* that goal obs)

Rows before the episode start repeat ``obs[0]`` (or zeros with ``pad_with_zeros``) and carry a
zero action, so no window ever crosses an episode boundary.

The token sequences each network sees (the pairings of ``agents.networks``) are slices:

==========================  =============================================  ==========================
network / use               observations                                   actions
==========================  =============================================  ==========================
F(h_t, a_t)                 ``obs_window[:, :-1]``                          ``prev_action_window[:, 1:]``
pi(h_t)                     ``obs_window[:, :-1]``                          ``prev_action_window[:, :-1]``
pi(h_{t+1})                 ``obs_window[:, 1:]``                           ``prev_action_window[:, 1:]``
F(h_{t+1}, a')              ``obs_window[:, 1:]``                           ``cat(prev_action_window[:, 2:], a')``
B(g_{t+1}) (measure)        ``goal_window[:, 1:]``                          ``goal_action_window[:, 1:]``
B(g_t) (z sampling)         ``goal_window[:, :-1]``                         ``goal_action_window[:, :-1]``
==========================  =============================================  ==========================

Memory-free networks use the last token only: o_t = ``obs_window[:, -2]``,
a_t = ``prev_action_window[:, -1]``, o_{t+1} = ``obs_window[:, -1]``, g_{t+1} = ``goal_window[:, -1]``.

An algorithm that needs sampled goals (HILP, for its temporal-distance features) declares them
with a ``GoalSampling`` (its config's ``batch_spec()``); the batch then also holds goal windows
(``sampled_goal_window`` and its actions, ``L_B`` rows ending at the goal state, the same
(g, action-taken-at-g) pairing) and a flag that is 1 where the goal row is the current state itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class GoalSampling:
    """Goals sampled with each batch: a future state of the same episode with probability
    ``future_prob`` (at a geometric offset >= 1 from the current row, success probability
    ``geometric_p``, clipped to the episode's last row), else a uniformly random state of the data.

    Attributes:
        future_prob: probability of a future goal (HILP: 0.625; the rest random).
        geometric_p: success probability of the geometric offset (HILP: 1 - 0.99).
    """

    future_prob: float
    geometric_p: float


@dataclass(frozen=True)
class BatchSpec:
    """What an algorithm needs in its training batches beyond the windows every one gets.

    Attributes:
        goals: sampled goal windows (``Batch.sampled_goal_*``), or None for none.
    """

    goals: GoalSampling | None = None


@dataclass
class Batch:
    """A batch of training windows. All tensors live on the training device, float32.

    Attributes:
        obs_window: [B, L_F + 1, obs_dim] obs-stream observations ending at o_{t+1}.
        prev_action_window: [B, L_F + 1, act_dim] action that led to each row of obs_window.
        goal_window: [B, L_B + 1, goal_dim] goal-stream observations ending at g_{t+1}.
        goal_action_window: [B, L_B + 1, act_dim] action taken at each row of goal_window.
        sampled_goal_window: [B, L_B, goal_dim] sampled goal windows (future or random state), or
            None when the batch spec asks for no goals.
        sampled_goal_action_window: [B, L_B, act_dim] actions taken at those goals, or None.
        sampled_goal_is_current: [B] 1.0 where the goal row is g_t itself, else 0.0, or None.
    """

    obs_window: torch.Tensor
    prev_action_window: torch.Tensor
    goal_window: torch.Tensor
    goal_action_window: torch.Tensor
    sampled_goal_window: torch.Tensor | None = None
    sampled_goal_action_window: torch.Tensor | None = None
    sampled_goal_is_current: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.obs_window.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """Returns a copy with every tensor moved to ``device`` (non-blocking)."""
        moved = {
            f.name: (
                None if getattr(self, f.name) is None else getattr(self, f.name).to(device, non_blocking=True)
            )
            for f in fields(self)
        }
        return Batch(**moved)


@dataclass
class LabelledWindows:
    """Reward-labelled goal-stream windows for zero-shot task inference.

    Attributes:
        goal_window: [N, L_B, goal_dim] goal-stream observations ending at the labelled row s.
        goal_action_window: [N, L_B, act_dim] actions taken at those observations.
        rewards: task name -> [N] reward R(physics[s]) of the labelled row.
        index: [N] storage row of each labelled state (``SequenceBuffer.physics_rows`` reads its
            physics state, so any reward of the state can label the windows).
    """

    goal_window: torch.Tensor
    goal_action_window: torch.Tensor
    rewards: dict[str, torch.Tensor]
    index: torch.Tensor | None = None
