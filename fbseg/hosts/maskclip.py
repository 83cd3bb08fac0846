"""MaskCLIP: the values alone (identity attention); the block's residual and FFN kept."""

from __future__ import annotations

from fbseg.hosts.base import Host, LastBlock, split_heads


class MaskCLIP(Host):
    """A = I (values only); residual and FFN kept, as the official block."""

    name = "maskclip"

    def last_block(self, block, x, grid, crops) -> LastBlock:
        _, _, v = split_heads(block, x)
        return LastBlock(block, None, v[:, :, 1:], None, x[:, 1:], grid)
