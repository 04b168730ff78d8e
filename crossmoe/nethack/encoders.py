"""Visual tokens of a NetHack observation: an egocentric crop, coarse map patches, blstats and the message."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from nle import nethack
from torch import Tensor, nn

from crossmoe._cache import DeviceCache
from crossmoe._checks import check_int
from crossmoe.encoders import obs_tensor
from crossmoe.nethack.glyphs import GLYPH_CLASS, GlyphClass

__all__ = ["COMPASS", "NetHackVisualEncoder", "blstats_features", "compass_direction"]

_ROWS, _COLS = nethack.DUNGEON_SHAPE
_CONDITION_MASKS = tuple(
    getattr(nethack, name) for name in sorted(dir(nethack)) if name.startswith("BL_MASK_") and name != "BL_MASK_BITS"
)
_NUM_HUNGER_STATES = 7  # satiated .. starved: NetHack's u.uhs enum (hack.h), which nle does not export
_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant
_CONDITION_MASKS_ON: DeviceCache[Tensor] = DeviceCache()


COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
"""The eight move directions, in the order of :meth:`NetHackVisualEncoder.token_directions`."""


def compass_direction(dy: Tensor, dx: Tensor) -> Tensor:
    """Index into :data:`COMPASS` of the 45-degree sector of each offset (rows grow southwards), ``-1`` at 0.

    Example:
        >>> compass_direction(torch.tensor([-5.0, 0.0, 2.0]), torch.tensor([1.0, 0.0, -3.0])).tolist()
        [0, -1, 5]
    """
    angle = torch.atan2(-dy.float(), dx.float())  # counterclockwise from east; north is +pi/2
    from_east = torch.round(angle / (math.pi / 4)).long() % 8  # 0 E, 1 NE, 2 N, ... 7 SE
    return torch.where((dy == 0) & (dx == 0), -1, (2 - from_east) % 8)


def _one_hot_direction(dy: Tensor, dx: Tensor) -> Tensor:
    sector = compass_direction(dy, dx)
    return F.one_hot(sector.clamp_min(0), len(COMPASS)).float() * (sector >= 0).unsqueeze(-1).float()


def _condition_masks(device: torch.device) -> Tensor:
    return _CONDITION_MASKS_ON.get(device, lambda device: torch.tensor(_CONDITION_MASKS, device=device))


def blstats_features(blstats: Tensor) -> Tensor:
    r"""Normalised features of the bottom-line stats.

    Every field is squashed with :math:`\operatorname{sign}(x)\log(1+|x|)`,
    and the parts that are not magnitudes are added explicitly: the HP and
    energy fractions, the hunger state one-hot and one bit per status
    condition (``nle.nethack.BL_MASK_*``).

    Shapes:
        - blstats: ``(B, 27)``
        - output: ``(B, 27 + 2 + 7 + 13)``
    """
    stats = blstats.to(torch.float32)
    symlog = torch.sign(stats) * torch.log1p(stats.abs())

    def fraction(value: int, maximum: int) -> Tensor:
        return stats[:, value] / stats[:, maximum].clamp_min(1.0)

    hunger = F.one_hot(blstats[:, nethack.NLE_BL_HUNGER].long().clamp(0, _NUM_HUNGER_STATES - 1), _NUM_HUNGER_STATES)
    masks = _condition_masks(blstats.device)
    conditions = (blstats[:, nethack.NLE_BL_CONDITION, None].long() & masks) != 0
    ratios = torch.stack(
        [fraction(nethack.NLE_BL_HP, nethack.NLE_BL_HPMAX), fraction(nethack.NLE_BL_ENE, nethack.NLE_BL_ENEMAX)], 1
    )
    return torch.cat([symlog, ratios, hunger.float(), conditions.float()], dim=1)


class NetHackVisualEncoder(nn.Module):
    r"""Visual tokens of a NetHack observation, with a key mask.

    Four kinds of token, all of width ``dim``:

    - **crop** (``crop_size**2`` tokens): the glyphs of an egocentric window
      around the player, each the sum of a glyph-id embedding, a glyph-class
      embedding (:class:`~crossmoe.nethack.glyphs.GlyphClass`) and a position
      embedding. The player's own cell has a class of its own and, when the
      observation has ``map_memory`` (:class:`~crossmoe.nethack.MapMemory`),
      the glyph of what the player stands on. Cells beyond the map edge are masked out. With
      ``crop_patch=p > 1`` each ``p x p`` block of cells becomes one token
      instead: the concatenated cell embeddings (width ``cell_dim``) are
      projected linearly, as in a ViT patch embedding, so each cell's place in
      its block is kept; a block is masked when all its cells are off the map.
    - **coarse** (one per ``patch`` of the 21x79 map, 24 by default): the
      histogram of glyph classes in the patch (the player's cell is a class of
      its own), projected linearly, plus a patch position embedding. A linear
      map of a histogram equals a sum of learned class embeddings, computed
      with one ``bincount`` instead of 1,659 embedding lookups per sample.
    - **blstats** (1 token): :func:`blstats_features` projected linearly.
    - **message** (1 token): the set of byte bigrams of the message, hashed
      into ``message_buckets`` bins and projected linearly.

    Args:
        dim: Token width ``D``.
        crop_size: Side of the egocentric window (odd).
        crop_patch: Side of the blocks of crop cells that form one token (the
            encoder defaults to ``1``; :func:`~crossmoe.nethack.make_policy`
            uses ``3``): ``1``
            gives one token per cell (81 for the 9x9 crop), ``3`` gives 9, the
            middle one the player's 3x3 neighbourhood. Fewer tokens make the
            cross-attention cheaper, at the price of attending to blocks.
        cell_dim: Width of the cell embeddings when ``crop_patch > 1``.
        patch: ``(rows, cols)`` of a coarse patch; the map is padded to a
            multiple of it.
        message_buckets: Hash bins for the message bigrams.

    Shapes:
        - obs["glyphs"]: ``(B, 21, 79)``, obs["blstats"]: ``(B, 27)``, obs["message"]: ``(B, 256)``
        - output: ``(tokens (B, N, D), mask (B, N) bool)`` with
          ``N = (crop_size // crop_patch)**2 + num_patches + 2``
    """

    def __init__(
        self,
        dim: int = 128,
        *,
        crop_size: int = 9,
        crop_patch: int = 1,
        cell_dim: int = 32,
        patch: tuple[int, int] = (7, 10),
        message_buckets: int = 1024,
    ) -> None:
        super().__init__()
        dim, cell_dim = check_int(dim, "dim"), check_int(cell_dim, "cell_dim")
        crop_size, crop_patch = check_int(crop_size, "crop_size"), check_int(crop_patch, "crop_patch")
        message_buckets = check_int(message_buckets, "message_buckets")
        if not isinstance(patch, (tuple, list)) or not all(isinstance(p, int) and p is not True for p in patch):
            raise TypeError(f"patch must be (rows, cols) of positive integers, got {patch!r}")
        if crop_size < 1 or crop_size % 2 == 0:
            raise ValueError(f"crop_size must be a positive odd integer, got {crop_size}")
        if crop_patch < 1 or crop_size % crop_patch:
            raise ValueError(f"crop_patch must be a positive divisor of crop_size={crop_size}, got {crop_patch}")
        if len(patch) != 2 or min(patch) < 1:
            raise ValueError(f"patch must be (rows, cols) of positive integers, got {patch}")
        if message_buckets < 2 or message_buckets & (message_buckets - 1):
            raise ValueError(f"message_buckets must be a power of two >= 2, got {message_buckets}")
        self.dim, self.crop_size, self.crop_patch = dim, crop_size, crop_patch
        self.patch, self.message_buckets = tuple(patch), message_buckets
        self.num_crop_tokens = (crop_size // crop_patch) ** 2
        num_classes = len(GlyphClass) + 1  # + the player's own cell
        self.player_class = len(GlyphClass)
        grid_rows, grid_cols = math.ceil(_ROWS / patch[0]), math.ceil(_COLS / patch[1])
        self.num_patches = grid_rows * grid_cols
        self.num_tokens = self.num_crop_tokens + self.num_patches + 2

        cell_dim = dim if crop_patch == 1 else cell_dim
        self.glyph_embedding = nn.Embedding(nethack.MAX_GLYPH + 1, cell_dim)
        self.class_embedding = nn.Embedding(num_classes, cell_dim)
        self.crop_proj = None if crop_patch == 1 else nn.Linear(crop_patch**2 * cell_dim, dim)
        self.crop_position = nn.Parameter(torch.randn(self.num_crop_tokens, dim) * 0.02)
        self.coarse_proj = nn.Linear(num_classes, dim)
        self.coarse_position = nn.Parameter(torch.randn(self.num_patches, dim) * 0.02)
        self.blstats_proj = nn.Linear(nethack.NLE_BLSTATS_SIZE + 2 + _NUM_HUNGER_STATES + len(_CONDITION_MASKS), dim)
        self.message_proj = nn.Linear(message_buckets, dim)

        # Window offsets in block-major order, so each block's cells are contiguous.
        side = crop_size // crop_patch
        block_row, block_col, cell_row, cell_col = torch.meshgrid(
            *(torch.arange(n) for n in (side, side, crop_patch, crop_patch)), indexing="ij"
        )
        rows, cols = (block_row * crop_patch + cell_row).flatten(), (block_col * crop_patch + cell_col).flatten()
        self.register_buffer("crop_rows", rows, persistent=False)
        self.register_buffer("crop_cols", cols, persistent=False)
        self.player_cell = int(((rows == crop_size // 2) & (cols == crop_size // 2)).nonzero())
        self.register_buffer("glyph_class", torch.tensor(GLYPH_CLASS, dtype=torch.long), persistent=False)
        rows = torch.arange(grid_rows * patch[0]) // patch[0]
        cols = torch.arange(grid_cols * patch[1]) // patch[1]
        patch_id = (rows[:, None] * grid_cols + cols[None, :])[:_ROWS, :_COLS]  # (21, 79) patch of each cell
        self.register_buffer("patch_id", patch_id.contiguous(), persistent=False)
        self.register_buffer("patch_area", torch.bincount(patch_id.flatten()).float(), persistent=False)
        # Directions for knowledge pathways that steer by attention (crossmoe.knowledge.AttentionDirectionPrior).
        centre = (torch.arange(side) * crop_patch + (crop_patch - 1) / 2 - crop_size // 2).float()
        block_dy, block_dx = torch.meshgrid(centre, centre, indexing="ij")
        crop_directions = _one_hot_direction(block_dy.flatten(), block_dx.flatten())
        self.register_buffer("crop_directions", crop_directions, persistent=False)
        cell_rows, cell_cols = torch.meshgrid(torch.arange(_ROWS).float(), torch.arange(_COLS).float(), indexing="ij")
        for name, coordinate in (("patch_centre_row", cell_rows), ("patch_centre_col", cell_cols)):
            total = torch.zeros(self.num_patches).index_add_(0, patch_id.flatten(), coordinate.flatten())
            self.register_buffer(name, total / self.patch_area, persistent=False)

    def forward(self, obs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        device = self.crop_position.device
        glyphs = obs_tensor(obs, "glyphs", device=device, dtype=torch.long, shape=(None, _ROWS, _COLS))
        batch = glyphs.shape[0]
        blstats = obs_tensor(obs, "blstats", device=device, dtype=torch.long, shape=(batch, nethack.NLE_BLSTATS_SIZE))
        message = obs_tensor(obs, "message", device=device, dtype=torch.long, shape=(batch, *nethack.MESSAGE_SHAPE))
        x = blstats[:, nethack.NLE_BL_X].clamp(0, _COLS - 1)
        y = blstats[:, nethack.NLE_BL_Y].clamp(0, _ROWS - 1)
        under = None
        if "map_memory" in obs:  # what the hero stands on (crossmoe.nethack.MapMemory)
            memory = obs_tensor(obs, "map_memory", device=device, dtype=torch.long, shape=(batch, _ROWS, _COLS))
            under = memory[torch.arange(batch, device=device), y, x]
        crop, crop_mask = self._crop_tokens(glyphs, x, y, under)
        tokens = torch.cat(
            [
                crop,
                self._coarse_tokens(glyphs, x, y),
                self.blstats_proj(blstats_features(blstats).to(self.blstats_proj.weight.dtype)).unsqueeze(1),
                self._message_token(message).unsqueeze(1),
            ],
            dim=1,
        )
        mask = torch.cat([crop_mask, crop_mask.new_ones(batch, self.num_patches + 2)], dim=1)
        return tokens, mask

    def token_directions(self, obs: Mapping[str, Any]) -> Tensor:
        """``(B, N, 8)``: the :data:`COMPASS` direction (one-hot) in which each token lies from the player.

        A crop block lies in the direction of its centre; a coarse patch in
        the direction of its centre from the player's cell (none for the patch
        the player is in); the blstats and message tokens in none (zeros).
        """
        device = self.crop_position.device
        blstats = obs_tensor(obs, "blstats", device=device, dtype=torch.long, shape=(None, nethack.NLE_BLSTATS_SIZE))
        batch = blstats.shape[0]
        x = blstats[:, nethack.NLE_BL_X].clamp(0, _COLS - 1)
        y = blstats[:, nethack.NLE_BL_Y].clamp(0, _ROWS - 1)
        coarse = _one_hot_direction(self.patch_centre_row - y[:, None], self.patch_centre_col - x[:, None])
        own_patch = F.one_hot(self.patch_id[y, x], self.num_patches).bool()  # (B, P)
        coarse = coarse.masked_fill(own_patch.unsqueeze(-1), 0.0)
        return torch.cat(
            [self.crop_directions.expand(batch, -1, -1), coarse, coarse.new_zeros(batch, 2, len(COMPASS))], dim=1
        )

    def _crop_tokens(self, glyphs: Tensor, x: Tensor, y: Tensor, under: Tensor | None) -> tuple[Tensor, Tensor]:
        radius = self.crop_size // 2
        off_map = nethack.MAX_GLYPH
        padded = F.pad(glyphs, (radius, radius, radius, radius), value=off_map)  # (B, 21 + 2r, 79 + 2r)
        rows = y[:, None] + self.crop_rows  # window row i covers map row y - r + i
        cols = x[:, None] + self.crop_cols
        batch_index = torch.arange(glyphs.shape[0], device=glyphs.device)[:, None]
        crop = padded[batch_index, rows, cols]  # (B, crop_size**2), block-major
        classes = self.glyph_class[crop]
        classes[:, self.player_cell] = self.player_class
        if under is not None:  # the player's cell: the glyph it hides, with the player's class embedding
            crop = crop.clone()
            crop[:, self.player_cell] = under
        cells = self.glyph_embedding(crop) + self.class_embedding(classes)
        kept = crop != off_map
        if self.crop_proj is None:
            return cells + self.crop_position, kept
        blocks = self.num_crop_tokens
        tokens = self.crop_proj(cells.reshape(cells.shape[0], blocks, -1))  # b (n p) c -> b n (p c)
        return tokens + self.crop_position, kept.view(kept.shape[0], blocks, -1).any(-1)

    def _coarse_tokens(self, glyphs: Tensor, x: Tensor, y: Tensor) -> Tensor:
        batch = glyphs.shape[0]
        num_classes = self.coarse_proj.in_features
        classes = self.glyph_class[glyphs]
        classes[torch.arange(batch, device=glyphs.device), y, x] = self.player_class
        bins = (
            torch.arange(batch, device=glyphs.device)[:, None, None] * self.num_patches + self.patch_id
        ) * num_classes
        cells = (bins + classes).flatten()
        # scatter_add into a fixed size rather than bincount: the same counts, faster on the CPU, and no
        # data-dependent output size for torch.compile.
        counts = glyphs.new_zeros(batch * self.num_patches * num_classes, dtype=self.coarse_proj.weight.dtype)
        counts.scatter_add_(0, cells, counts.new_ones(cells.shape))
        histogram = counts.view(batch, self.num_patches, num_classes) / self.patch_area[:, None]
        return self.coarse_proj(histogram) + self.coarse_position

    def _message_token(self, message: Tensor) -> Tensor:
        bigrams = message[:, :-1] * 256 + message[:, 1:]
        buckets = ((bigrams * _HASH_MULTIPLIER) & 0xFFFFFFFF) >> (32 - int(math.log2(self.message_buckets)))
        buckets = buckets.masked_fill(message[:, 1:] == 0, self.message_buckets)  # padding goes to a spare bin
        present = message.new_zeros(message.shape[0], self.message_buckets + 1, dtype=self.message_proj.weight.dtype)
        present.scatter_(1, buckets, 1.0)
        return self.message_proj(present[:, : self.message_buckets])

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, crop_size={self.crop_size}, crop_patch={self.crop_patch}, patch={self.patch}, "
            f"message_buckets={self.message_buckets}, num_tokens={self.num_tokens}"
        )
