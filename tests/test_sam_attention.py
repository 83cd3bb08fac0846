"""SAM's global attention in bands of query rows equals timm's own, on SAM ViT-B's layout."""

import copy

import pytest
import torch


@pytest.fixture(scope="module")
def sam_b():
    import timm

    torch.manual_seed(0)
    return timm.create_model("samvit_base_patch16.sa1b", pretrained=False).eval()


def test_only_the_global_blocks_change_and_the_weights_keep_their_names(sam_b):
    from fbseg.models.sam_attention import chunk_global_attention

    banded = chunk_global_attention(copy.deepcopy(sam_b))
    changed = [i for i, b in enumerate(banded.blocks) if "forward" in vars(b.attn)]
    assert changed == [2, 5, 8, 11]  # SAM ViT-B's global attention blocks
    assert list(banded.state_dict()) == list(sam_b.state_dict())


def test_banded_global_attention_equals_timms(sam_b, monkeypatch):
    """One global block at SAM's 64 × 64 grid, random weights and random relative-position
    tables (timm initialises them to zero, which would hide a wrong band)."""
    import fbseg.models.sam_attention as sam_attention

    block = copy.deepcopy(sam_b.blocks[2].attn)
    with torch.no_grad():
        block.rel_pos_h.normal_(std=0.5)
        block.rel_pos_w.normal_(std=0.5)
    x = torch.randn(1, 64, 64, 768, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = block(x)  # timm's forward: the whole 12 × 4096² bias
        banded = copy.deepcopy(sam_b)
        sam_attention.chunk_global_attention(banded)
        banded.blocks[2].attn.load_state_dict(block.state_dict())
        monkeypatch.setattr(sam_attention, "GRID_ROWS_PER_BAND", 5)  # a ragged last band
        got = banded.blocks[2].attn(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
