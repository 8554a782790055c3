"""The training losses: Dice over the whole batch, as nnU-Net computes it."""

from __future__ import annotations

import pytest
import torch

from attnunet.pipelines.engines.components import create_loss


def _confident(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits that give the right class everywhere with a probability of about 0.9999."""
    return torch.nn.functional.one_hot(labels[:, 0], classes).movedim(-1, 1).float() * 10.0


@pytest.mark.parametrize("name", ["dice_ce", "dice"])
def test_a_class_absent_from_one_patch_costs_nothing_when_predicted_absent(name):
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    labels[0, 0, :4, :4] = 1
    labels[0, 0, 6:, 6:] = 2  # class 2 in the first patch only, class 1 likewise
    loss = create_loss(name, 3)(_confident(labels, 3), labels)
    # A Dice per patch would score the second patch's classes 1 and 2 as empty predictions of an empty
    # reference: about 1 each, a loss near 0.5 for a perfect prediction.
    assert float(loss) < 0.01


def test_bce_is_for_one_output_and_dice_for_one_per_class():
    with pytest.raises(ValueError, match=r"loss 'bce' does not fit out_channels=3"):
        create_loss("bce", 3)
    with pytest.raises(ValueError, match=r"loss 'dice' does not fit out_channels=1"):
        create_loss("dice", 1)
