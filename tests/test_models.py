"""Models: every MiT size builds and trains, the encoder equals MiT written from the paper's
equations, the whole student equals an independent re-implementation of CMX (FRM, FFM) and the
SegFormer decoder on weights in the official layout, parameter counts equal the official models',
and utils/op_counts.py counts multiply-adds like an independent count."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from config import load_config
from models import build_model
from models.weight_layouts import load_checkpoint, load_imagenet_encoder, to_official_state_dict
from models.encoders.mit import mit_size
from utils.op_counts import count_macs

# The SegFormer sizes, written out here independently of the model's table.
WIDTHS = {'mit_b0': (32, 64, 160, 256)}
WIDTHS.update({f'mit_b{k}': (64, 128, 320, 512) for k in range(1, 6)})
DEPTHS = {'mit_b0': (2, 2, 2, 2), 'mit_b1': (2, 2, 2, 2), 'mit_b2': (3, 4, 6, 3),
          'mit_b3': (3, 4, 18, 3), 'mit_b4': (3, 8, 27, 3), 'mit_b5': (3, 6, 40, 3)}
HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
slow = pytest.mark.slow


def demo_config(*opts):
    return load_config('config/demo.py', list(opts))


def rel_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


# --- every size builds, runs forward and backward ----------------------------------------------

@pytest.mark.parametrize('backbone', [
    'mit_b0', 'mit_b1', 'mit_b2',
    pytest.param('mit_b3', marks=slow), pytest.param('mit_b4', marks=slow),
    pytest.param('mit_b5', marks=slow)])
@pytest.mark.parametrize('role', ['teacher', 'student'])
def test_forward_backward_every_size(backbone, role):
    torch.manual_seed(0)
    cfg = demo_config(f'backbone={backbone}')
    model = build_model(cfg, role, distill=role == 'student').train()
    branch = model.encoder.rgb
    assert [len(stage.blocks) for stage in branch.stages] == list(DEPTHS[backbone])
    rgb, extra = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    out = model(rgb, extra)
    assert out.logits.shape == (2, cfg.num_classes, 64, 64)
    assert [tuple(f.shape) for f in out.features] == [
        (2, width, 64 // stride, 64 // stride)
        for width, stride in zip(WIDTHS[backbone], (4, 8, 16, 32))]
    loss = out.logits.logsumexp(dim=1).mean() + sum(r.square().mean()
                                                    for r in out.reconstructions.values())
    loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    if role == 'student':
        assert set(out.reconstructions) == {'loss1', 'loss2', 'loss3', 'loss4'}
        assert model.encoder.extra.stages[0].blocks[0].attn.q.weight.grad.abs().sum() > 0
        assert model.encoder.fuse[3].cross.cross_attn.kv1.weight.grad.abs().sum() > 0
    else:
        assert out.reconstructions == {}


def test_student_needs_extra_and_teacher_ignores_it():
    cfg = demo_config()
    student, teacher = build_model(cfg, 'student').eval(), build_model(cfg, 'teacher').eval()
    rgb = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match='extra'):
        student(rgb)
    with pytest.raises(ValueError, match='shape'):
        student(rgb, torch.randn(1, 3, 32, 64))
    with torch.no_grad():
        assert torch.equal(teacher(rgb).logits, teacher(rgb, torch.randn_like(rgb)).logits)
    with pytest.raises(ValueError, match='distill'):
        build_model(cfg, 'teacher', distill=True)
    with pytest.raises(ValueError, match='mode must be one of'):
        build_model(cfg, 'rgb')


def test_bn_eps_and_decoder_init():
    cfg = demo_config()
    student, teacher = build_model(cfg, 'student'), build_model(cfg, 'teacher')
    assert student.decoder.linear_fuse[1].eps == 1e-3 == cfg.bn_eps
    assert teacher.decoder.linear_fuse[1].eps == 1e-5 == cfg.teacher_bn_eps
    # The FFMs' BatchNorms keep PyTorch's eps, as in CMX.
    assert student.encoder.fuse[0].channel_emb.norm.eps == 1e-5
    # kaiming fan_in: std sqrt(2 / fan_in) for the decoder's fuse conv (fan_in 4 * 128).
    std = student.decoder.linear_fuse[0].weight.std().item()
    assert abs(std - math.sqrt(2 / 512)) < 0.05 * math.sqrt(2 / 512)
    # MiT rule in the FFM: Linear std .02 with zero bias.
    proj = student.encoder.fuse[2].cross.channel_proj1
    assert abs(proj.weight.std().item() - 0.02) < 0.002 and proj.bias.abs().max() == 0


@pytest.mark.parametrize('backbone, student, teacher', [
    ('mit_b2', 66_581_424, 25_793_256), ('mit_b4', 139_874_224, 62_439_656)])
def test_parameter_counts_equal_official(backbone, student, teacher):
    """Counts measured on the official PrimKD code (decoder embed 512, 40 classes, no heads)."""
    cfg = load_config(f'config/nyu_{backbone[-2:]}.py')
    with torch.device('meta'):  # shapes only: instant even for B4
        counts = {role: sum(p.numel() for p in build_model(cfg, role).parameters())
                  for role in ('student', 'teacher')}
    assert counts == {'student': student, 'teacher': teacher}


def test_mit_b1_is_b1():
    with torch.device('meta'):
        branch = build_model(demo_config('backbone=mit_b1'), 'teacher').encoder.rgb
    assert branch.patch_embed.proj.out_channels == 64
    assert [len(stage.blocks) for stage in branch.stages] == [2, 2, 2, 2]


# --- MiT from the paper's equations ----------------------------------------------------------

def layer_norm(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[name + '.weight'], sd[name + '.bias'], eps)


def linear(x, sd, name):
    out = x @ sd[name + '.weight'].T
    return out + sd[name + '.bias'] if name + '.bias' in sd else out


def conv(x, sd, name, **kwargs):
    return F.conv2d(x, sd[name + '.weight'], sd.get(name + '.bias'), **kwargs)


def batch_norm(x, sd, name, eps):
    shape = (1, -1, 1, 1)
    return ((x - sd[name + '.running_mean'].view(shape))
            / torch.sqrt(sd[name + '.running_var'].view(shape) + eps)
            * sd[name + '.weight'].view(shape) + sd[name + '.bias'].view(shape))


def tokens(x):
    return x.flatten(2).transpose(1, 2)


def image(t, height, width):
    return t.transpose(1, 2).reshape(t.shape[0], -1, height, width)


def split_heads(t, heads):
    batch, n, channels = t.shape
    return t.reshape(batch, n, heads, channels // heads).transpose(1, 2)


def merge_heads(t):
    return t.transpose(1, 2).flatten(2)


def reference_attention(t, sd, name, height, width, heads, sr_ratio):
    """Spatial-reduction attention: keys/values from an sr x sr strided conv + LayerNorm."""
    channels = t.shape[-1]
    source = t
    if sr_ratio > 1:
        source = tokens(conv(image(t, height, width), sd, name + '.sr', stride=sr_ratio))
        source = layer_norm(source, sd, name + '.norm', 1e-5)
    kv = linear(source, sd, name + '.kv')
    q = split_heads(linear(t, sd, name + '.q'), heads)
    k, v = split_heads(kv[..., :channels], heads), split_heads(kv[..., channels:], heads)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(channels // heads), dim=-1)
    return linear(merge_heads(weights @ v), sd, name + '.proj')


def reference_mix_ffn(t, sd, name, height, width):
    hidden = image(linear(t, sd, name + '.fc1'), height, width)
    hidden = conv(hidden, sd, name + '.dwconv.dwconv', padding=1, groups=hidden.shape[1])
    return linear(F.gelu(tokens(hidden)), sd, name + '.fc2')


def reference_mit_stage(x, sd, prefix, stage, heads, sr_ratio):
    """One MiT stage in the official key layout: overlapping patch embedding (7x7/4 or 3x3/2) +
    LayerNorm, blocks x + Attn(LN(x)), x + MixFFN(LN(x)), stage LayerNorm."""
    k = stage + 1
    x = conv(x, sd, f'{prefix}patch_embed{k}.proj', stride=4 if k == 1 else 2,
             padding=3 if k == 1 else 1)
    height, width = x.shape[-2:]
    t = layer_norm(tokens(x), sd, f'{prefix}patch_embed{k}.norm', 1e-5)
    block = 0
    while f'{prefix}block{k}.{block}.norm1.weight' in sd:
        name = f'{prefix}block{k}.{block}'
        t = t + reference_attention(layer_norm(t, sd, name + '.norm1', 1e-6), sd, name + '.attn',
                                    height, width, heads, sr_ratio)
        t = t + reference_mix_ffn(layer_norm(t, sd, name + '.norm2', 1e-6), sd, name + '.mlp',
                                  height, width)
        block += 1
    return image(layer_norm(t, sd, f'{prefix}norm{k}', 1e-6), height, width)


def random_segformer_b0(generator):
    """A random mit_b0.pth in the SegFormer release's key layout, shapes from the paper."""
    sd = {}

    def add(name, *shape, kind='weight'):
        if kind == 'norm':
            sd[name + '.weight'] = 1 + 0.1 * torch.randn(shape, generator=generator)
            sd[name + '.bias'] = 0.1 * torch.randn(shape, generator=generator)
            return
        fan_in = math.prod(shape[1:])
        sd[name + '.weight'] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        sd[name + '.bias'] = 0.1 * torch.randn(shape[0], generator=generator)

    in_channels = 3
    for stage, (width, depth, sr) in enumerate(zip(WIDTHS['mit_b0'], DEPTHS['mit_b0'], SR_RATIOS)):
        k, kernel = stage + 1, 7 if stage == 0 else 3
        add(f'patch_embed{k}.proj', width, in_channels, kernel, kernel)
        add(f'patch_embed{k}.norm', width, kind='norm')
        for block in range(depth):
            name = f'block{k}.{block}'
            add(name + '.norm1', width, kind='norm')
            add(name + '.attn.q', width, width)
            add(name + '.attn.kv', 2 * width, width)
            add(name + '.attn.proj', width, width)
            if sr > 1:
                add(name + '.attn.sr', width, width, sr, sr)
                add(name + '.attn.norm', width, kind='norm')
            add(name + '.norm2', width, kind='norm')
            add(name + '.mlp.fc1', 4 * width, width)
            add(name + '.mlp.dwconv.dwconv', 4 * width, 1, 3, 3)
            add(name + '.mlp.fc2', width, 4 * width)
        add(f'norm{k}', width, kind='norm')
        in_channels = width
    add('head', 1000, in_channels)
    return sd


def test_mit_encoder_equals_paper_equations(tmp_path):
    generator = torch.Generator().manual_seed(0)
    sd = random_segformer_b0(generator)
    torch.save(sd, tmp_path / 'mit_b0.pth')
    cfg = demo_config()
    teacher, student = build_model(cfg, 'teacher').eval(), build_model(cfg, 'student').eval()
    load_imagenet_encoder(teacher, tmp_path / 'mit_b0.pth')
    load_imagenet_encoder(student, tmp_path / 'mit_b0.pth')

    rgb = torch.randn(2, 3, 64, 96, generator=generator)
    with torch.no_grad():
        features = teacher.encoder(rgb)
    sd64 = {k: v.double() for k, v in sd.items()}
    x = rgb.double()
    for stage, feature in enumerate(features):
        x = reference_mit_stage(x, sd64, '', stage, HEADS[stage], SR_RATIOS[stage])
        assert feature.shape == x.shape
        assert rel_error(feature, x) < 1e-5, f'stage {stage + 1}'
    for branch in (student.encoder.rgb, student.encoder.extra):
        assert all(torch.equal(a, b) for a, b in zip(branch.state_dict().values(),
                                                      teacher.encoder.rgb.state_dict().values()))


# --- the whole student against CMX + SegFormer written out here ------------------------------

class RecordingDict(dict):
    """Remembers which keys the reference read, to show the official layout has no unused keys."""

    def __init__(self, *args):
        super().__init__(*args)
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.used.add(key)
        return super().get(key, default)


def reference_frm(rgb, extra, sd, name):
    """Feature Rectify Module: channel weights from an MLP on avg+max pooled [rgb, extra], spatial
    weights from 1x1 convs; each modality gains 0.5 * (channel + spatial) weighted other one."""
    channels = rgb.shape[1]
    both = torch.cat([rgb, extra], dim=1)
    pooled = torch.cat([both.mean(dim=(2, 3)), both.amax(dim=(2, 3))], dim=1)
    channel = torch.sigmoid(linear(torch.relu(linear(pooled, sd, name + '.channel_weights.mlp.0')),
                                   sd, name + '.channel_weights.mlp.2'))[:, :, None, None]
    spatial = torch.sigmoid(conv(torch.relu(conv(both, sd, name + '.spatial_weights.mlp.0')),
                                 sd, name + '.spatial_weights.mlp.2'))
    rectified_rgb = rgb + 0.5 * channel[:, channels:] * extra + 0.5 * spatial[:, 1:2] * extra
    rectified_extra = extra + 0.5 * channel[:, :channels] * rgb + 0.5 * spatial[:, 0:1] * rgb
    return rectified_rgb, rectified_extra


def reference_ffm(rgb, extra, sd, name, heads):
    """Feature Fusion Module: cross path with efficient cross-attention, then channel embedding."""
    batch, channels, height, width = rgb.shape
    scale = (channels // heads) ** -0.5

    def context(u, kv_name):  # softmax over the key dimension of (k^T v) * scale, per head
        kv = linear(u, sd, kv_name)
        k, v = split_heads(kv[..., :channels], heads), split_heads(kv[..., channels:], heads)
        return torch.softmax(k.transpose(-2, -1) @ v * scale, dim=-2)

    t1, t2 = tokens(rgb), tokens(extra)
    p1 = torch.relu(linear(t1, sd, name + '.cross.channel_proj1'))
    p2 = torch.relu(linear(t2, sd, name + '.cross.channel_proj2'))
    y1, u1 = p1[..., :channels], p1[..., channels:]
    y2, u2 = p2[..., :channels], p2[..., channels:]
    v1 = merge_heads(split_heads(u1, heads) @ context(u2, name + '.cross.cross_attn.kv2'))
    v2 = merge_heads(split_heads(u2, heads) @ context(u1, name + '.cross.cross_attn.kv1'))
    o1 = layer_norm(t1 + linear(torch.cat([y1, v1], -1), sd, name + '.cross.end_proj1'),
                    sd, name + '.cross.norm1', 1e-5)
    o2 = layer_norm(t2 + linear(torch.cat([y2, v2], -1), sd, name + '.cross.end_proj2'),
                    sd, name + '.cross.norm2', 1e-5)
    merged = image(torch.cat([o1, o2], dim=-1), height, width)
    embed = name + '.channel_emb'
    x = conv(merged, sd, embed + '.channel_embed.0')
    x = torch.relu(conv(x, sd, embed + '.channel_embed.1', padding=1, groups=channels))
    x = batch_norm(conv(x, sd, embed + '.channel_embed.3'), sd, embed + '.channel_embed.4', 1e-5)
    return batch_norm(conv(merged, sd, embed + '.residual') + x, sd, embed + '.norm', 1e-5)


def reference_decoder(features, sd, bn_eps, size):
    def embed(x, k):
        return image(linear(tokens(x), sd, f'decode_head.linear_c{k}.proj'), *x.shape[-2:])

    def up(x, to):
        return F.interpolate(x, size=to, mode='bilinear', align_corners=False)

    c1_size = features[0].shape[-2:]
    x = torch.cat([up(embed(features[3], 4), c1_size), up(embed(features[2], 3), c1_size),
                   up(embed(features[1], 2), c1_size), embed(features[0], 1)], dim=1)
    x = torch.relu(batch_norm(conv(x, sd, 'decode_head.linear_fuse.0'), sd,
                              'decode_head.linear_fuse.1', bn_eps))
    return up(conv(x, sd, 'decode_head.linear_pred'), size)


def randomised(state, generator):
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif key.endswith('running_var'):
            out[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif value.dim() == 1 and key.endswith('weight'):  # LayerNorm / BatchNorm scale
            out[key] = 1 + 0.1 * torch.randn(value.shape, generator=generator)
        elif value.dim() == 1:
            out[key] = 0.1 * torch.randn(value.shape, generator=generator)
        else:
            fan_in = value[0].numel()
            out[key] = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
    return out


def test_student_equals_reference_on_official_weights():
    generator = torch.Generator().manual_seed(1)
    cfg = demo_config()
    student = build_model(cfg, 'student', distill=True).eval()
    official = randomised(to_official_state_dict(student), generator)
    fresh = build_model(cfg, 'student', distill=True).eval()
    load_checkpoint(fresh, {'model': {'module.' + k: v for k, v in official.items()},
                            'epoch': 3})

    rgb, extra = torch.randn(2, 3, 64, 96, generator=generator), torch.randn(2, 3, 64, 96,
                                                                              generator=generator)
    with torch.no_grad():
        out = fresh(rgb, extra)
    sd = RecordingDict({k: v.double() for k, v in official.items()})
    x_rgb, x_extra, fused = rgb.double(), extra.double(), []
    for stage in range(4):
        x_rgb = reference_mit_stage(x_rgb, sd, 'backbone.', stage, HEADS[stage], SR_RATIOS[stage])
        x_extra = reference_mit_stage(x_extra, sd, 'backbone.extra_', stage, HEADS[stage],
                                      SR_RATIOS[stage])
        x_rgb, x_extra = reference_frm(x_rgb, x_extra, sd, f'backbone.FRMs.{stage}')
        fused.append(reference_ffm(x_rgb, x_extra, sd, f'backbone.FFMs.{stage}', HEADS[stage]))
    logits = reference_decoder(fused, sd, cfg.bn_eps, rgb.shape[-2:])
    hints = {f'loss{k}': conv(fused[k - 1], sd, f'decode_head.align_loss{k}') for k in range(1, 5)}

    for stage in range(4):
        assert rel_error(out.features[stage], fused[stage]) < 1e-5, f'stage {stage + 1}'
    assert rel_error(out.logits, logits) < 1e-5
    for name, hint in hints.items():
        assert rel_error(out.reconstructions[name], hint) < 1e-5, name
    unused = {k for k in sd if k not in sd.used and not k.endswith('num_batches_tracked')}
    assert not unused


# --- multiply-adds --------------------------------------------------------------------------

def independent_macs(model, *inputs):
    """Multiply-adds from module hooks and shapes: Linear, Conv2d, the MiT attention products
    (N x N_kv x C twice) and the CMX cross-attention products (N x C x d, twice per modality)."""
    from timm.models.pvt_v2 import Attention
    from models.encoders.fusion import CrossAttention
    total = 0

    def hook(module, args, output):
        nonlocal total
        if isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw
        elif isinstance(module, Attention):
            x, (height, width) = args
            ratio = module.sr.stride[0] if module.sr is not None else 1
            total += 2 * x.shape[0] * x.shape[1] * (height // ratio) * (width // ratio) * x.shape[2]
        elif isinstance(module, CrossAttention):
            batch, n, channels = args[0].shape
            total += 4 * batch * n * channels * (channels // module.num_heads)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(*inputs)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize('role', ['teacher', 'student'])
def test_flops_counts_attention(role):
    torch.manual_seed(0)
    model = build_model(demo_config(), role, distill=role == 'student').eval()
    rgb = torch.randn(1, 3, 64, 96)
    inputs = (rgb, torch.randn_like(rgb))
    macs = count_macs(model, *inputs)
    assert macs['total'] == independent_macs(model, *inputs)
    assert macs['total'] == macs['encoder'] + macs['decoder'] + macs.get('distill_heads', 0)
    # The plain counter misses the fused CPU attention kernel; on the math path it sees the same.
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(*inputs)
    assert plain.get_total_flops() // 2 < macs['total']
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math_path:
        model(*inputs)
    assert math_path.get_total_flops() // 2 == macs['total']


class AttentionCalls(TorchFunctionMode):
    """Records the query shape of every F.scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.query_shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.query_shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('role', ['teacher', 'student'])
def test_every_mit_block_uses_fused_attention(role):
    """The speed of training rests on torch's fused attention kernels: every MiT block of every
    branch must reach them through F.scaled_dot_product_attention (timm's fused path)."""
    cfg = demo_config()
    model = build_model(cfg, role).eval()
    rgb = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), AttentionCalls() as spy:
        model(rgb, torch.randn_like(rgb))
    size = mit_size(cfg.backbone)
    branches = 2 if role == 'student' else 1
    # Stage k attends from (64 / 2^(k+1)) x (96 / 2^(k+1)) query tokens with one head per 32 channels.
    expected = [(1, heads, (64 >> (stage + 2)) * (96 >> (stage + 2)), 32)
                for stage, (depth, heads) in enumerate(zip(size.depths, size.num_heads))
                for _ in range(depth)]
    assert sorted(spy.query_shapes) == sorted(expected * branches)
