"""The teacher that guides the student: another MiT size (heads map the student's widths to the
teacher's), an RGB-X teacher whose fused features are the targets, and the one-line check of a
teacher checkpoint against the config."""
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from models import build_model, build_teacher, check_teacher_checkpoint, load_teacher
from models.distill import distillation_losses
from models.weight_layouts import CheckpointError, load_checkpoint, to_official_state_dict
from tools import flops

# SegFormer stage widths, written out here independently of the model's table.
B0_WIDTHS, WIDE = (32, 64, 160, 256), (64, 128, 320, 512)
STAGES = ['loss1', 'loss2', 'loss3', 'loss4']


def demo_config(*opts):
    return load_config('config/demo.py', ['decoder_embed_dim=32', *opts])


def seeded(seed, build, *args, **kwargs):
    torch.manual_seed(seed)
    return build(*args, **kwargs)


@pytest.mark.parametrize('mask_single', ['hint', 'mask_hint'])
def test_b0_student_trains_with_a_wider_b1_teacher(mask_single):
    cfg = demo_config('teacher_backbone=mit_b1', f'mask_single={mask_single}')
    student = seeded(0, build_model, cfg, 'student', distill=True).train()
    teacher = seeded(1, build_teacher, cfg).eval()
    assert not teacher.takes_extra and teacher.encoder.out_channels == WIDE
    assert teacher.decoder.linear_fuse[1].eps == cfg.teacher_bn_eps  # the official RGB teacher's
    for name, student_width, teacher_width in zip(STAGES, B0_WIDTHS, WIDE):
        head = student.distill_heads[name]
        assert head.align.weight.shape == (teacher_width, student_width, 1, 1)
        if mask_single == 'mask_hint':
            assert [conv.weight.shape for conv in head.generate[::2]] == [
                (teacher_width, teacher_width, 3, 3)] * 2

    rgb, extra = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    label = torch.randint(0, cfg.num_classes, (2, 64, 64))
    with torch.inference_mode():
        teacher_out = teacher(rgb, extra)  # every model is called one way; RGB ignores extra
    out = student(rgb, extra)
    losses = distillation_losses(out, teacher_out, cfg)
    loss = F.cross_entropy(out.logits, label) + losses['kl'] + losses['feat']
    loss.backward()

    for index, name in enumerate(STAGES):
        reconstruction = out.reconstructions[name]
        assert reconstruction.shape == (2, WIDE[index], 64 >> (index + 2), 64 >> (index + 2))
        expected = F.mse_loss(reconstruction.detach(), teacher_out.features[index].clone())
        assert losses[f'feat_{name}'].item() == pytest.approx(expected.item(), rel=1e-5)
    stage = losses['feat_stage'].item()
    assert losses['feat'].item() == pytest.approx(
        cfg.distillation_beta * max(losses[f'feat_{n}'].item() for n in STAGES), rel=1e-6)
    for index, head in enumerate(student.distill_heads.values()):
        assert (head.align.weight.grad.abs().max() > 0) == (index == stage)
    assert student.encoder.extra.stages[0].blocks[0].attn.q.weight.grad.abs().max() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_narrow_heads_round_trip_through_the_official_layout():
    cfg = demo_config('teacher_backbone=mit_b1', 'mask_single=mask_hint')
    model = seeded(0, build_model, cfg, 'student', distill=True)
    official = to_official_state_dict(model)
    assert official['decode_head.align_loss1.weight'].shape == (64, 32, 1, 1)
    fresh = seeded(1, build_model, cfg, 'student', distill=True)
    load_checkpoint(fresh, {'model': official})
    exported = to_official_state_dict(fresh)
    assert list(exported) == list(official)
    assert all(torch.equal(exported[k], official[k]) for k in official)


@pytest.mark.parametrize('config', ['config/nyu_b2.py', 'config/nyu_b4.py'])
def test_equal_widths_keep_the_official_head_shapes(config):
    """B2 and B4 share the stage widths: the B2 student's heads for the released B4 teacher are the
    square 1x1 convs of the official PrimKD student, whatever teacher_backbone says."""
    with torch.device('meta'):
        default = build_model(load_config(config), 'student', distill=True)
        same = build_model(load_config(config, ['teacher_backbone=None']), 'student', distill=True)
    shapes = {k: tuple(v.shape) for k, v in to_official_state_dict(default).items()}
    assert shapes == {k: tuple(v.shape) for k, v in to_official_state_dict(same).items()}
    assert [shapes[f'decode_head.align_loss{k}.weight'] for k in range(1, 5)] == [
        (width, width, 1, 1) for width in WIDE]


def save(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize('layout', ['project', 'official'])
def test_rgbx_teacher_from_a_student_checkpoint_gives_its_fused_features(tmp_path, layout):
    cfg = demo_config('teacher_modality=rgbx')
    source = seeded(0, build_model, cfg, 'student', distill=True).eval()
    state = (source.state_dict() if layout == 'project'
             else {'model': to_official_state_dict(source), 'epoch': 3})
    path = save(tmp_path, 'cmx.pth', state if layout == 'official'
                else {'format': 'primkd', 'role': 'student', 'model': state, 'epoch': 3})

    teacher = load_teacher(cfg, path)
    assert teacher.takes_extra and teacher.distill_heads is None  # the source's heads are ignored
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.decoder.linear_fuse[1].eps == cfg.bn_eps  # a student-architecture model

    rgb, extra = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = source.encoder(rgb, extra)  # the direct forward of the checkpoint's model
    with torch.inference_mode():
        teacher_out = teacher(rgb, extra)
    # Not bit-identical: freezing the weights alone changes torch's kernel choice (1e-7 relative).
    for got, expected in zip(teacher_out.features, fused):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    with pytest.raises(ValueError, match='extra'):
        teacher(rgb)

    student = seeded(5, build_model, cfg, 'student', distill=True).train()
    out = student(rgb, extra)
    losses = distillation_losses(out, teacher_out, cfg)
    for index, name in enumerate(STAGES):
        expected = F.mse_loss(out.reconstructions[name].detach(), fused[index])
        assert losses[f'feat_{name}'].item() == pytest.approx(expected.item(), rel=1e-5)


def teacher_files(tmp_path):
    """Checkpoints of the demo's size (MiT-B0, 8 classes): an RGB teacher in the official layout,
    a dual-branch student in the project layout, and an RGB teacher of 5 classes."""
    rgb = seeded(0, build_model, demo_config(), 'teacher')
    dual = seeded(0, build_model, demo_config(), 'student')
    five = seeded(0, build_model, demo_config('num_classes=5', "class_names=['a','b','c','d','e']"),
                  'teacher')
    # No MiT size has depths 2-2-2-1.
    odd = {k: v for k, v in rgb.state_dict().items() if not k.startswith('encoder.rgb.stages.3.blocks.1.')}
    return {'rgb': save(tmp_path, 'rgb.pth', {'model': to_official_state_dict(rgb)}),
            'rgbx': save(tmp_path, 'dual.pth', dual.state_dict()),
            'five': save(tmp_path, 'five.pth', five.state_dict()),
            'odd': save(tmp_path, 'odd.pth', odd)}


@pytest.mark.parametrize('checkpoint, opts, fragments', [
    ('rgb', ['teacher_backbone=mit_b1'],
     ["is a mit_b0 RGB teacher", 'says teacher_backbone mit_b1, teacher_modality rgb',
      '(--opts teacher_backbone=mit_b0)']),
    ('rgb', ['teacher_modality=rgbx'],
     ['is a mit_b0 RGB teacher', 'teacher_backbone None (the backbone, mit_b0), teacher_modality rgbx',
      '(--opts teacher_modality=rgb)']),
    ('rgbx', [], ['is a mit_b0 RGB-X model', 'teacher_modality rgb', '(--opts teacher_modality=rgbx)']),
    ('rgbx', ['teacher_backbone=mit_b2'],
     ['(--opts teacher_backbone=mit_b0 teacher_modality=rgbx)']),
    ('five', [], ['predicts 5 classes', 'num_classes=8']),
    ('odd', [], ['is an RGB teacher (single-branch) of an unknown MiT size (depths 2-2-2-1,',
                 'teacher_modality rgb']),
    ('missing', [], ['nope.pth', 'not found', '--mode teacher', '--teacher PATH']),
])
def test_a_teacher_that_does_not_fit_is_named_in_one_line(tmp_path, checkpoint, opts, fragments):
    path = teacher_files(tmp_path).get(checkpoint, str(tmp_path / 'nope.pth'))
    cfg = demo_config(*opts)
    for call in (check_teacher_checkpoint, load_teacher):
        with pytest.raises(CheckpointError) as error:
            call(cfg, path)
        message = str(error.value)
        assert '\n' not in message and path in message
        for fragment in fragments:
            assert fragment in message


def test_the_b2_config_takes_the_released_b4_teacher(tmp_path):
    """config/nyu_b2.py: the released MiT-B4 RGB teacher passes the check, a B2 one is named (shapes
    only: meta tensors keep the files tiny)."""
    cfg = load_config('config/nyu_b2.py')
    assert cfg.teacher_checkpoint.endswith('pretrained/pre/nyu-rgb.pth')
    with torch.device('meta'):
        b4 = build_teacher(cfg)
        b2 = build_model(cfg, 'teacher')
    b4_path = save(tmp_path, 'nyu-rgb.pth', {'model': to_official_state_dict(b4)})
    b2_path = save(tmp_path, 'b2.pth', {'model': to_official_state_dict(b2)})
    assert 'decode_head.linear_pred.weight' in check_teacher_checkpoint(cfg, b4_path)['model']
    with pytest.raises(CheckpointError, match=r"is a mit_b2 RGB teacher .* says teacher_backbone mit_b4, "
                                              r"teacher_modality rgb \(--opts teacher_backbone=mit_b2\)"):
        check_teacher_checkpoint(cfg, b2_path)
    check_teacher_checkpoint(load_config('config/nyu_b2.py', ['teacher_backbone=mit_b2']), b2_path)


def test_teacher_keys_are_checked():
    with pytest.raises(Exception, match="'teacher_backbone'"):
        demo_config('teacher_backbone=mit_b9')
    with pytest.raises(Exception, match="'teacher_modality'"):
        demo_config('teacher_modality=depth')


def test_flops_reports_the_configured_teacher(capsys):
    opts = ['--opts', 'decoder_embed_dim=32', 'teacher_backbone=mit_b1', 'teacher_modality=rgbx']
    flops.main(['-c', 'config/demo.py', '--mode', 'teacher', '--size', '64', '64', *opts])
    printed = capsys.readouterr().out
    with torch.device('meta'):
        dual = build_teacher(demo_config('teacher_backbone=mit_b1', 'teacher_modality=rgbx'))
        rgb_only = build_teacher(demo_config('teacher_backbone=mit_b1'))
    counts = [sum(p.numel() for p in model.parameters()) / 1e6 for model in (dual, rgb_only)]
    assert 'mit_b1 teacher (rgbx)' in printed
    assert f"parameters:    {counts[0]:.2f} M" in printed and f"{counts[0]:.2f}" != f"{counts[1]:.2f}"
