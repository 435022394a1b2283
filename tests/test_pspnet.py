"""PSPNet structure: output stride 8, any input size, aux head only in training, fused PPM == unfused."""

import pytest
import torch

from edgestack.models import resolve
from edgestack.models.pspnet.model import PSPNet, PyramidPoolingModule

TINY = {"block": "basic", "layers": (1, 1, 1, 1), "stem_width": 8, "head_channels": 32, "num_classes": 5}


@pytest.mark.parametrize("size", [(73, 73), (97, 131), (66, 90)])
def test_any_input_size_gives_full_resolution_logits(size):
    model = PSPNet(**TINY).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size)
    assert torch.isfinite(logits).all()


def test_backbone_has_output_stride_8_and_dilation():
    model = PSPNet(**(TINY | {"layers": (1, 1, 1, 2)})).eval()
    with torch.no_grad():
        _, features = model.backbone(torch.randn(1, 3, 473, 473))
    assert features.shape[-2:] == (60, 60)
    # Every block of a dilated stage at its dilation, the first one too, as the official PSPNet sets it.
    assert [block.conv1.dilation for block in model.backbone.layer4] == [(4, 4), (4, 4)]
    assert model.backbone.layer3[0].conv1.dilation == (2, 2)
    r50 = PSPNet(**(TINY | {"block": "bottleneck", "layers": (1, 1, 2, 2)}))
    assert [block.conv2.dilation for block in r50.backbone.layer3] == [(2, 2), (2, 2)]
    assert [block.conv2.dilation for block in r50.backbone.layer4] == [(4, 4), (4, 4)]


def test_training_mode_returns_aux_logits_and_weighted_loss():
    model = PSPNet(**TINY).train()
    image, target = torch.randn(2, 3, 65, 65), torch.randint(0, 5, (2, 65, 65))
    main, aux = model(image)
    assert main.shape == aux.shape == (2, 5, 65, 65)
    loss = model.loss((main, aux), target)
    want = torch.nn.functional.cross_entropy(main, target) + 0.4 * torch.nn.functional.cross_entropy(aux, target)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert model.ppm.convs[0].weight.grad is not None


def test_fused_ppm_with_folded_batchnorm_equals_unfused_branches():
    ppm = PyramidPoolingModule(channels=16, reduction=4)
    for norm in ppm.norms:  # non-trivial BatchNorm statistics so the folding is really exercised
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 16, 23, 17)
    ppm.eval()
    with torch.no_grad():
        fused = ppm(x)
        ppm.training = True  # the unfused branch path, but BatchNorms still in eval mode
        for norm in ppm.norms:
            norm.eval()
        unfused = ppm(x)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_registry_configs_build_and_paper_size_parameters():
    spec, config = resolve("pspnet")
    assert config == "pspnet-r50"
    r50 = spec.build(spec.configs["pspnet-r50"])
    assert r50.ppm.out_channels == 2048 + 4 * 512
    # Dilated ResNet-50 + PPM + heads: about 49M parameters (aux head included; it is dropped at export).
    assert 45e6 < sum(p.numel() for p in r50.parameters()) < 52e6
    _, small = resolve("pspnet-r18")
    assert small == "pspnet-r18"
