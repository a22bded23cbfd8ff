"""Distillation: KL, KD, CWD, DIST and feature losses against hand or independent (numpy/scipy)
computations, max/min selection and where the
gradient goes, the reconstruct heads and their random mask."""
import math

import numpy
import pytest
import scipy.special
import scipy.stats
import torch
from easydict import EasyDict

from config import load_config
from models import SegOutput, build_model
from models.distill import HintHead, MaskedHintHead, ReconstructHeads, distillation_losses


def loss_config(**changes):
    cfg = EasyDict(distillation_alpha=1.0, distillation_beta=0.1, distillation_flag=1,
                   distillation_single=1, distillation_kl_confidence=0.0, select='max',
                   distillation_logit_loss='kl', distillation_tau=None)
    cfg.update(changes)
    return cfg


def output(logits, features=(), reconstructions=None):
    return SegOutput(logits, list(features), reconstructions or {})


# Two pixels, two classes. Pixel 1: teacher logits (0, ln 3) -> p_t = (1/4, 3/4); student logits
# (0, 0) -> p_s = (1/2, 1/2). Pixel 2: teacher (0, 0) -> (1/2, 1/2); student (ln 4, 0) ->
# (4/5, 1/5).
TEACHER = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]).view(1, 2, 1, 2)
STUDENT = torch.tensor([[0.0, math.log(4)], [0.0, 0.0]]).view(1, 2, 1, 2)
P_T = [(1 / 4, 3 / 4), (1 / 2, 1 / 2)]
P_S = [(1 / 2, 1 / 2), (4 / 5, 1 / 5)]


def kl_by_hand(p, q):
    per_pixel = [sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(pp, qq))
                 for pp, qq in zip(p, q)]
    return sum(per_pixel) / len(per_pixel)


@pytest.mark.parametrize('flag, expected', [(1, kl_by_hand(P_T, P_S)), (0, kl_by_hand(P_S, P_T))])
def test_kl_both_directions(flag, expected):
    student = STUDENT.clone().requires_grad_()
    teacher = TEACHER.clone().requires_grad_()
    losses = distillation_losses(output(student), output(teacher),
                                 loss_config(distillation_flag=flag, distillation_alpha=0.5))
    assert losses['kl'].item() == pytest.approx(0.5 * expected, rel=1e-6)
    losses['kl'].backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kl_only_where_the_teacher_is_confident():
    # Teacher top probabilities: 3/4 at pixel 1, 1/2 at pixel 2. At 0.7 only pixel 1 counts, and the
    # mean still divides by both pixels; at 0.5 both count, as without the threshold.
    per_pixel = [sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(pt, ps)) for pt, ps in zip(P_T, P_S)]
    for threshold, expected in ((0.7, per_pixel[0] / 2), (0.5, kl_by_hand(P_T, P_S)), (0.8, 0.0)):
        losses = distillation_losses(output(STUDENT), output(TEACHER),
                                     loss_config(distillation_kl_confidence=threshold))
        assert losses['kl'].item() == pytest.approx(expected, rel=1e-6, abs=1e-12)


# Independent computations of the three standard distillers, in float64 numpy with explicit loops
# over images, pixels and channels, from the papers' formulas.

def random_logits(seed, shape=(2, 5, 3, 4)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 3


def kd_by_numpy(student, teacher, tau, flag):
    s, t = student.numpy(), teacher.numpy()
    total, pixels = 0.0, 0
    for n in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                p_t = scipy.special.softmax(t[n, :, i, j] / tau)
                p_s = scipy.special.softmax(s[n, :, i, j] / tau)
                p, q = (p_t, p_s) if flag == 1 else (p_s, p_t)
                total += scipy.special.rel_entr(p, q).sum()
                pixels += 1
    return tau ** 2 * total / pixels


def cwd_by_numpy(student, teacher, tau):
    s, t = student.numpy(), teacher.numpy()
    terms = []
    for n in range(s.shape[0]):
        for c in range(s.shape[1]):
            p_t = scipy.special.softmax(t[n, c].ravel() / tau)
            p_s = scipy.special.softmax(s[n, c].ravel() / tau)
            terms.append(scipy.special.rel_entr(p_t, p_s).sum())
    return tau ** 2 * numpy.mean(terms)


def dist_by_numpy(student, teacher, tau):
    classes = student.shape[1]
    y_s = scipy.special.softmax(student.numpy() / tau, axis=1).transpose(0, 2, 3, 1).reshape(-1, classes)
    y_t = scipy.special.softmax(teacher.numpy() / tau, axis=1).transpose(0, 2, 3, 1).reshape(-1, classes)
    inter = 1 - numpy.mean([scipy.stats.pearsonr(a, b).statistic for a, b in zip(y_s, y_t)])
    intra = 1 - numpy.mean([scipy.stats.pearsonr(a, b).statistic for a, b in zip(y_s.T, y_t.T)])
    return tau ** 2 * (inter + intra)


@pytest.mark.parametrize('flag', [1, 0])
@pytest.mark.parametrize('tau', [None, 2.0])
def test_kd_against_numpy(flag, tau):
    student, teacher = random_logits(1), random_logits(2)
    cfg = loss_config(distillation_logit_loss='kd', distillation_tau=tau, distillation_flag=flag,
                      distillation_alpha=0.5)
    losses = distillation_losses(output(student.float()), output(teacher.float()), cfg)
    expected = kd_by_numpy(student, teacher, 4.0 if tau is None else tau, flag)
    assert losses['kl'].item() == pytest.approx(0.5 * expected, rel=1e-5)


def test_kd_at_temperature_one_is_the_papers_kl():
    student, teacher = random_logits(3).float(), random_logits(4).float()
    kd = distillation_losses(output(student), output(teacher),
                             loss_config(distillation_logit_loss='kd', distillation_tau=1.0))['kl']
    kl = distillation_losses(output(student), output(teacher), loss_config())['kl']
    assert kd.item() == pytest.approx(kl.item(), rel=1e-6)


@pytest.mark.parametrize('tau', [None, 1.0])
def test_cwd_against_numpy(tau):
    student, teacher = random_logits(5), random_logits(6)
    cfg = loss_config(distillation_logit_loss='cwd', distillation_tau=tau, distillation_alpha=3.0)
    losses = distillation_losses(output(student.float()), output(teacher.float()), cfg)
    expected = cwd_by_numpy(student, teacher, 4.0 if tau is None else tau)
    assert losses['kl'].item() == pytest.approx(3.0 * expected, rel=1e-5)


@pytest.mark.parametrize('tau', [None, 2.0])
def test_dist_against_scipy_pearson(tau):
    student, teacher = random_logits(7), random_logits(8)
    cfg = loss_config(distillation_logit_loss='dist', distillation_tau=tau)
    losses = distillation_losses(output(student.float()), output(teacher.float()), cfg)
    expected = dist_by_numpy(student, teacher, 1.0 if tau is None else tau)
    assert losses['kl'].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize('name', ['kd', 'cwd', 'dist'])
def test_standard_distillers_vanish_on_the_teacher_and_train_the_student(name):
    teacher = random_logits(9).float()
    cfg = loss_config(distillation_logit_loss=name)
    same = distillation_losses(output(teacher.clone()), output(teacher), cfg)['kl']
    assert abs(same.item()) < 1e-5
    student = random_logits(10).float().requires_grad_()
    loss = distillation_losses(output(student), output(teacher), cfg)['kl']
    assert loss.item() > 1e-3
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_logit_loss_settings_are_checked(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text('from config.demo import demo_config\nconfig = demo_config()\n')
    with pytest.raises(ValueError, match="distillation_logit_loss"):
        load_config(str(path), {'distillation_logit_loss': 'fitnet'})
    with pytest.raises(ValueError, match="distillation_tau.*'kl'"):
        load_config(str(path), {'distillation_tau': 2.0})
    with pytest.raises(ValueError, match="distillation_kl_confidence.*'cwd'"):
        load_config(str(path), {'distillation_logit_loss': 'cwd', 'distillation_kl_confidence': 0.9})
    assert load_config(str(path), {'distillation_logit_loss': 'dist', 'distillation_tau': 2}).distillation_tau == 2.0


def test_kl_off():
    for changes in ({'distillation_single': 0}, {'distillation_alpha': 0.0}):
        losses = distillation_losses(output(STUDENT), output(TEACHER), loss_config(**changes))
        assert losses['kl'].item() == 0


def stage_tensors(values, requires_grad=False):
    """Constant tensors of the given values, one per stage, of stage-like shapes."""
    return [torch.full((2, 3, 8 >> k, 8 >> k), float(v), requires_grad=requires_grad)
            for k, v in enumerate(values)]


def test_feature_mse_select_and_gradient():
    # Per-stage MSE = (student - teacher)^2: stage 1: 1, stage 2: 9, stage 3: 4, stage 4: 0.25.
    teacher_features = stage_tensors([0, 0, 0, 0], requires_grad=True)
    student_values = [1, 3, -2, 0.5]
    for select, stage, value in (('max', 1, 9.0), ('min', 3, 0.25)):
        reconstructions = dict(zip(['loss1', 'loss2', 'loss3', 'loss4'],
                                   stage_tensors(student_values, requires_grad=True)))
        losses = distillation_losses(output(STUDENT, reconstructions=reconstructions),
                                     output(TEACHER, teacher_features), loss_config(select=select))
        assert [losses[f'feat_loss{k}'].item() for k in range(1, 5)] == [1.0, 9.0, 4.0, 0.25]
        assert not any(losses[f'feat_loss{k}'].requires_grad for k in range(1, 5))
        assert losses['feat'].item() == pytest.approx(0.1 * value)
        assert losses['feat_stage'].item() == stage
        losses['feat'].backward()
        for index, (name, tensor) in enumerate(reconstructions.items()):
            if index == stage:  # d/dx beta * mean((x - t)^2) = beta * 2 (x - t) / numel
                expected = 0.1 * 2 * student_values[index] / tensor.numel()
                assert torch.allclose(tensor.grad, torch.full_like(tensor, expected))
            else:
                assert tensor.grad.abs().max() == 0, name
        assert all(t.grad is None for t in teacher_features)


def test_feature_subset_and_none():
    teacher_features = stage_tensors([0, 0, 0, 0])
    reconstructions = {'loss2': stage_tensors([0, 2, 0, 0])[1],
                       'loss4': stage_tensors([0, 0, 0, 3])[3]}
    losses = distillation_losses(output(STUDENT, reconstructions=reconstructions),
                                 output(TEACHER, teacher_features), loss_config())
    assert set(k for k in losses if k.startswith('feat_loss')) == {'feat_loss2', 'feat_loss4'}
    assert losses['feat_stage'].item() == 3 and losses['feat'].item() == pytest.approx(0.9)
    losses = distillation_losses(output(STUDENT, reconstructions=reconstructions),
                                 output(TEACHER, teacher_features), loss_config(select='none'))
    assert losses['feat'].item() == 0 and losses['feat_stage'].item() == -1
    assert losses['feat_loss4'].item() == 9.0
    losses = distillation_losses(output(STUDENT), output(TEACHER, teacher_features), loss_config())
    assert losses['feat'].item() == 0 and losses['feat_stage'].item() == -1


def test_shape_mismatch_is_named():
    reconstructions = {'loss1': torch.zeros(1, 3, 4, 4)}
    with pytest.raises(ValueError, match='loss1'):
        distillation_losses(output(STUDENT, reconstructions=reconstructions),
                            output(TEACHER, [torch.zeros(1, 5, 4, 4)]), loss_config())


@pytest.mark.parametrize('mask_single', ['hint', 'mask_hint'])
def test_models_with_inference_mode_teacher(mask_single):
    torch.manual_seed(0)
    cfg = load_config('config/demo.py', [f'mask_single={mask_single}'])
    student = build_model(cfg, 'student', distill=True).train()
    teacher = build_model(cfg, 'teacher').eval()
    rgb, extra = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        teacher_out = teacher(rgb)
    losses = distillation_losses(student(rgb, extra), teacher_out, cfg)
    (losses['kl'] + losses['feat']).backward()
    chosen = f"loss{losses['feat_stage'].item() + 1}"
    for name, head in student.distill_heads.items():
        grad = head.align.weight.grad
        assert grad is not None  # every head is in the graph, as DDP wants
        assert (grad.abs().max() > 0) == (name == chosen), name
    assert all(p.grad is None for p in teacher.parameters())


def test_heads_structure():
    # Student widths (8, 16, 24, 32) to teacher widths (8, 20, 24, 40).
    student_widths, teacher_widths = (8, 16, 24, 32), (8, 20, 24, 40)
    heads = ReconstructHeads(student_widths, teacher_widths, ['loss2', 'loss4'], 'mask_hint', 0.5)
    assert sorted(heads) == ['loss2', 'loss4']
    assert isinstance(heads['loss2'], MaskedHintHead)
    assert heads['loss4'].align.kernel_size == (1, 1)
    assert (heads['loss4'].align.in_channels, heads['loss4'].align.out_channels) == (32, 40)
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in heads['loss2'].generate
            if hasattr(m, 'kernel_size')] == [(20, 20, (3, 3)), (20, 20, (3, 3))]
    features = [torch.randn(1, c, 4, 4) for c in student_widths]
    out = heads(features)
    assert out['loss2'].shape == (1, 20, 4, 4) and out['loss4'].shape == (1, 40, 4, 4)
    hint = ReconstructHeads(student_widths, student_widths, ['loss1'], 'hint', 0.5)
    assert isinstance(hint['loss1'], HintHead)
    assert hint['loss1'].align.weight.shape == (8, 8, 1, 1)
    assert torch.allclose(hint(features)['loss1'], hint['loss1'].align(features[0]))
    with pytest.raises(ValueError, match='mask_single'):
        ReconstructHeads(student_widths, student_widths, ['loss1'], 'mgd', 0.5)


def test_mask_keeps_lambda_of_positions():
    torch.manual_seed(0)
    channels = 3
    head = MaskedHintHead(channels, channels, keep_prob=0.75)
    identity = torch.zeros(channels, channels, 3, 3)
    identity[range(channels), range(channels), 1, 1] = 1
    with torch.no_grad():  # make align and generate identities, so the output is the mask itself
        head.align.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        for conv in (head.generate[0], head.generate[2]):
            conv.weight.copy_(identity)
        for conv in (head.align, head.generate[0], head.generate[2]):
            conv.bias.zero_()
        out = head(torch.ones(4, channels, 100, 100))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out[:, :1].expand_as(out), out)  # one mask per position, for all channels
    keep = out[:, 0].mean().item()
    assert abs(keep - 0.75) < 0.01  # 40000 draws: standard deviation 0.002
    assert not torch.equal(out[0], out[1])  # a mask per sample
