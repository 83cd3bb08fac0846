"""SAM's relative-position attention with its lookup on the device and its global blocks in
bands of query rows equals timm's own, on SAM ViT-B's layout."""

import copy

import pytest
import torch


@pytest.fixture(scope="module")
def sam_b():
    import timm

    torch.manual_seed(0)
    return timm.create_model("samvit_base_patch16.sa1b", pretrained=False).eval()


def test_every_rel_pos_block_changes_and_the_weights_keep_their_names(sam_b):
    from fbseg.models.sam_attention import patch_rel_pos_attention

    patched = patch_rel_pos_attention(copy.deepcopy(sam_b))
    changed = [i for i, b in enumerate(patched.blocks) if "forward" in vars(b.attn)]
    assert changed == list(range(12))  # SAM ViT-B: 8 windowed blocks, 4 global (2, 5, 8, 11)
    assert [b.window_size for b in patched.blocks if b.window_size == 0] == [0] * 4
    assert list(patched.state_dict()) == list(sam_b.state_dict())


@pytest.mark.parametrize(
    "q_size,k_size,length",
    [(64, 64, 127), (14, 14, 27), (14, 14, 127), (10, 20, 39), (20, 10, 25)],
)
def test_the_position_lookup_equals_timms(q_size, k_size, length):
    """Equal and unequal axes, the table at its length or resized."""
    from timm.models.vision_transformer_sam import get_rel_pos

    from fbseg.models.sam_attention import rel_pos_table

    table = torch.randn(length, 16, generator=torch.Generator().manual_seed(length))
    expected = get_rel_pos(q_size, k_size, table)
    torch.testing.assert_close(rel_pos_table(q_size, k_size, table), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "block_index,shape,bands",
    [(2, (1, 64, 64, 768), 13), (0, (4, 14, 14, 768), 1)],
    ids=["global", "window"],
)
def test_the_attention_equals_timms(sam_b, monkeypatch, block_index, shape, bands):
    """A global block at SAM's 64 × 64 grid (in bands of 5 rows, the last one ragged) and a
    windowed block on 14 × 14 windows (whole), random weights and random relative-position
    tables (timm initialises them to zero, which would hide a wrong band or lookup)."""
    import torch.nn.functional as F

    import fbseg.models.sam_attention as sam_attention

    calls = []
    original = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sam_attention.F, "scaled_dot_product_attention", counted)

    block = copy.deepcopy(sam_b.blocks[block_index].attn)
    with torch.no_grad():
        block.rel_pos_h.normal_(std=0.5)
        block.rel_pos_w.normal_(std=0.5)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = block(x)  # timm's forward: the whole bias, its index made on the CPU
        patched = copy.deepcopy(sam_b)
        sam_attention.patch_rel_pos_attention(patched)
        patched.blocks[block_index].attn.load_state_dict(block.state_dict())
        monkeypatch.setattr(sam_attention, "GRID_ROWS_PER_BAND", 5)  # a ragged last band
        calls.clear()  # timm's own forward called it too
        got = patched.blocks[block_index].attn(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    assert len(calls) == bands
