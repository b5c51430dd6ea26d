"""BatchNorm folded into the convolution before it during the gradient stages: same outputs, same gradients,
the model restored, unsafe pairs left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simprune.compensation.block_recon import block_units, reconstruct_blocks
from simprune.compensation.output_recon import reconstruct_outputs
from simprune.folded_norms import conv_norm_pairs, folded_batchnorm
from simprune.zoo import build_model


def _randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh model's fold would be the identity)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_mobilenet_v2"])
def test_folded_model_has_the_same_outputs_and_gradients(arch: str) -> None:
    torch.manual_seed(0)
    net = _randomised(build_model(arch))
    ref = copy.deepcopy(net)
    x = torch.randn(4, 3, 32, 32)
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with folded_batchnorm(net, x[:2]) as folded:
        assert folded == len(conv_norm_pairs(ref, x[:2])) == n_norms  # every BatchNorm follows a convolution
        out = net(x)
        out.square().mean().backward()
    want = ref(x)
    want.square().mean().backward()
    assert torch.allclose(out, want, rtol=1e-4, atol=1e-5)
    got = torch.cat([p.grad.flatten() for p in net.parameters()])
    grads = torch.cat([q.grad.flatten() for q in ref.parameters()])
    assert float((got - grads).norm()) <= 1e-4 * float(grads.norm())
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        # per tensor, looser: the folded pass rounds differently, which can flip a ReLU gate sitting at 0
        assert float((p.grad - q.grad).norm()) <= 1e-2 * float(q.grad.norm()) + 1e-12, name
    assert not any("forward" in m.__dict__ for m in net.modules())  # restored: the classes' own forwards
    assert torch.equal(net(x), ref(x))


class _Tapped(nn.Module):
    """A convolution whose output feeds its BatchNorm and, untransformed, a second branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_pairs_that_cannot_be_folded_are_left_alone() -> None:
    x = torch.randn(2, 3, 8, 8)
    tapped = _randomised(_Tapped())
    assert len(conv_norm_pairs(tapped, x)) == 1  # found, but folding would change the second branch's input
    with folded_batchnorm(tapped, x) as folded:
        assert folded == 0 and "forward" not in tapped.conv.__dict__
    train = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()  # batch statistics: not an affine map
    with folded_batchnorm(train, x) as folded:
        assert folded == 0
    net = _randomised(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    with folded_batchnorm(net, x, enabled=False) as folded:
        assert folded == 0
    with pytest.raises(RuntimeError), folded_batchnorm(net, x) as folded:
        assert folded == 1 and "forward" in net[0].__dict__
        raise RuntimeError("boom")
    assert "forward" not in net[0].__dict__ and "forward" not in net[1].__dict__  # restored on errors too


def test_reconstructions_fit_the_same_with_folded_norms() -> None:
    torch.manual_seed(0)
    dense = _randomised(build_model("cifar_resnet20"))
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))  # a perturbed model to fit back
    x = torch.randn(48, 3, 32, 32)
    runs = {}
    for fold in (True, False):
        m = copy.deepcopy(pruned)
        out = reconstruct_outputs(dense, m, x, steps=6, batch_size=16, lr=1e-3, fold_norms=fold)
        blocks = reconstruct_blocks(dense, copy.deepcopy(pruned), block_units(pruned)[:2], x, steps=5, n_images=32,
                                    fold_norms=fold)
        runs[fold] = (out, blocks)
    (out_f, blocks_f), (out_p, blocks_p) = runs[True], runs[False]
    assert out_f["folded_norms"] == {"dense": 19, "pruned": 19} and out_p["folded_norms"] == {"dense": 0, "pruned": 0}
    assert out_f["held_out_loss_before"] == pytest.approx(out_p["held_out_loss_before"], rel=1e-4)
    assert out_f["held_out_loss_last"] == pytest.approx(out_p["held_out_loss_last"], rel=2e-2)
    assert out_f["held_out_loss_last"] < out_f["held_out_loss_before"]
    for a, b in zip(blocks_f["units"], blocks_p["units"], strict=True):
        assert a["error_before"] == pytest.approx(b["error_before"], rel=1e-4)
        assert a["error_after"] == pytest.approx(b["error_after"], rel=2e-2)  # Adam: rounding-sized moves
        assert a["error_after"] < a["error_before"]


class _FailsOnThirdPass(nn.Module):
    """conv -> BN, raising on the third forward pass (the folded check's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.calls = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("third pass")
        return self.bn(self.conv(x))


def test_a_failing_check_pass_leaves_the_model_as_it_was() -> None:
    net = _randomised(_FailsOnThirdPass())
    with pytest.raises(RuntimeError, match="third pass"), folded_batchnorm(net, torch.randn(1, 3, 6, 6)):
        pass
    assert "forward" not in net.conv.__dict__ and "forward" not in net.bn.__dict__
