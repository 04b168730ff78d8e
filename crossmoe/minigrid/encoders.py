"""Visual tokens of a MiniGrid observation: one per cell of the 7x7 view, and one for the mission."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
from torch import Tensor, nn

from crossmoe._checks import check_int
from crossmoe.encoders import obs_tensor
from crossmoe.minigrid.env import ANY_COLOR, Task

__all__ = ["MiniGridVisualEncoder"]

_VIEW = 7
_UNSEEN = OBJECT_TO_IDX["unseen"]


class MiniGridVisualEncoder(nn.Module):
    """Tokens of a MiniGrid observation with known positions, and the mission as one more token.

    Each cell of the 7x7 egocentric view becomes the sum of an object, a
    colour and a state embedding and a learned position embedding (cell
    ``(x, y)`` keeps its place in the agent's view: the agent stands at
    ``(3, 6)`` facing up, and its own cell shows what it carries). Unseen
    cells are masked out. The mission token is the sum of the embeddings of
    :class:`~crossmoe.minigrid.MissionCode`'s task, object and colour (one more
    colour stands for "any") and of the agent's compass ``direction``.

    Args:
        dim: Token width ``D``.

    Shapes:
        - obs["image"]: ``(B, 7, 7, 3)``, obs["mission"]: ``(B, 3)``, obs["direction"]: ``(B,)``
        - output: ``(tokens (B, 50, D), mask (B, 50) bool)``
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.num_tokens = _VIEW * _VIEW + 1
        self.object_embedding = nn.Embedding(len(OBJECT_TO_IDX), dim)
        self.color_embedding = nn.Embedding(len(COLOR_TO_IDX) + 1, dim)  # + "any colour"
        self.state_embedding = nn.Embedding(len(STATE_TO_IDX), dim)
        self.position = nn.Parameter(torch.randn(_VIEW * _VIEW, dim) * 0.02)
        self.task_embedding = nn.Embedding(len(Task), dim)
        self.direction_embedding = nn.Embedding(4, dim)
        offsets = torch.tensor([0, len(OBJECT_TO_IDX), len(OBJECT_TO_IDX) + len(COLOR_TO_IDX) + 1])
        self.register_buffer("_offsets", offsets, persistent=False)  # of each table's rows in the stacked table

    def forward(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        device = self.position.device
        image = obs_tensor(obs, "image", device=device, dtype=torch.long, shape=(None, _VIEW, _VIEW, 3))
        batch = image.shape[0]
        mission = obs_tensor(obs, "mission", device=device, dtype=torch.long, shape=(batch, 3))
        direction = obs_tensor(obs, "direction", device=device, dtype=torch.long, shape=(batch,))
        cells = image.reshape(batch, _VIEW * _VIEW, 3)  # cell x * 7 + y
        # The sum of the three embeddings as one matmul of the cells' multi-hot codes with the stacked tables:
        # the same value, and on CPU about half the time of three lookups once the backward pass is counted.
        table = torch.cat([self.object_embedding.weight, self.color_embedding.weight, self.state_embedding.weight])
        hot = torch.zeros(batch * _VIEW * _VIEW, table.shape[0], device=device, dtype=table.dtype)
        hot.scatter_(1, (cells + self._offsets).reshape(-1, 3), 1.0)
        tokens = (hot @ table).view(batch, _VIEW * _VIEW, self.dim) + self.position
        color = torch.where(mission[:, 2] == ANY_COLOR, len(COLOR_TO_IDX), mission[:, 2])
        goal = (
            self.task_embedding(mission[:, 0])
            + self.object_embedding(mission[:, 1])
            + self.color_embedding(color)
            + self.direction_embedding(direction)
        )
        tokens = torch.cat([tokens, goal.unsqueeze(1)], dim=1)
        mask = torch.cat([cells[..., 0] != _UNSEEN, cells.new_ones(batch, 1, dtype=torch.bool)], dim=1)
        return tokens, mask

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_tokens={self.num_tokens}"
