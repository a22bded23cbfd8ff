"""Checkpoints: official and project layouts load, round trips are exact, and every misfit gets a
clear error that names the keys, roles, sizes or class counts involved."""
import pytest
import torch

from config import load_config
from models import build_model
from models.weight_layouts import (CheckpointError, load_checkpoint, load_imagenet_encoder,
                                official_key, project_key, read_checkpoint_file, to_official_state_dict)


def demo_model(role, distill=False, seed=0, *opts):
    torch.manual_seed(seed)
    return build_model(load_config('config/demo.py', list(opts)), role, distill=distill)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# Key counts and names of the official PrimKD models (MiT-B0, four stages of heads), read off the
# official code: the student with hint heads, with mask_hint heads, and the RGB teacher.
OFFICIAL = {
    ('student', 'hint'): (533, ['backbone.patch_embed1.proj.weight',
                                'backbone.block1.0.mlp.dwconv.dwconv.weight',
                                'backbone.extra_patch_embed2.norm.bias',
                                'backbone.extra_block4.1.attn.kv.weight',
                                'backbone.extra_norm3.weight',
                                'backbone.FRMs.0.channel_weights.mlp.2.weight',
                                'backbone.FFMs.3.channel_emb.channel_embed.4.running_var',
                                'backbone.FFMs.1.cross.cross_attn.kv2.weight',
                                'decode_head.linear_fuse.1.num_batches_tracked',
                                'decode_head.align_loss4.bias']),
    ('student', 'mask_hint'): (549, ['decode_head.conv_loss1.0.weight',
                                     'decode_head.conv_loss3.2.bias',
                                     'decode_head.align_loss2.weight']),
    ('teacher', None): (193, ['backbone.block1.1.attn.sr.weight', 'backbone.norm4.bias',
                              'backbone.patch_embed4.proj.weight',
                              'decode_head.linear_c3.proj.bias',
                              'decode_head.linear_pred.weight']),
}


@pytest.mark.parametrize('role, mask_single', list(OFFICIAL))
def test_round_trip_through_official_layout(role, mask_single):
    opts = [f'mask_single={mask_single}'] if mask_single else []
    distill = role == 'student'
    model = demo_model(role, distill, 0, *opts)
    official = to_official_state_dict(model)
    count, names = OFFICIAL[(role, mask_single)]
    assert len(official) == count
    assert set(names) <= set(official)
    assert not any(k.startswith('backbone.extra') for k in official) or role == 'student'
    for key in model.state_dict():
        assert project_key(official_key(key)) == key

    fresh = demo_model(role, distill, 1, *opts)
    assert not torch.equal(fresh.decoder.linear_pred.weight, model.decoder.linear_pred.weight)
    raw = {'model': {'module.' + k: v for k, v in official.items()}, 'epoch': 7}
    assert load_checkpoint(fresh, raw) is raw
    assert_same_state(fresh, model)
    exported = to_official_state_dict(fresh)
    assert list(exported) == list(official)
    assert all(torch.equal(exported[k], official[k]) for k in official)


def test_project_format_file(tmp_path):
    model = demo_model('student', True, 0)
    path = tmp_path / 'epoch-1.pth'
    torch.save({'format': 'primkd', 'role': 'student', 'model': model.state_dict(), 'epoch': 1,
                'optimizer': {'state': {}, 'param_groups': []}}, path)
    fresh = demo_model('student', True, 1)
    raw = load_checkpoint(fresh, path)
    assert raw['epoch'] == 1
    assert_same_state(fresh, model)


def test_heads_are_ignored_by_a_model_without_heads():
    trained = demo_model('student', True, 0)
    evaluated = demo_model('student', False, 1)
    load_checkpoint(evaluated, {'model': to_official_state_dict(trained)})
    load_checkpoint(evaluated, trained.state_dict())
    assert torch.equal(evaluated.encoder.fuse[0].cross.norm1.weight,
                       trained.encoder.fuse[0].cross.norm1.weight)
    # A model with heads of the other kind: the foreign heads are named.
    masked = demo_model('student', True, 2, 'mask_single=mask_hint')
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(masked, {'model': to_official_state_dict(trained)})
    assert 'decode_head.conv_loss1.0.weight' in str(error.value)


@pytest.mark.parametrize('official', [False, True])
def test_one_error_names_missing_unexpected_and_wrong_shape(official):
    model = demo_model('student', False, 0)
    state = dict(model.state_dict())
    del state['decoder.linear_fuse.1.running_var']
    state['decoder.linear_extra.weight'] = torch.zeros(3)
    state['encoder.rgb.stages.0.blocks.0.attn.q.weight'] = torch.zeros(32, 16)
    names = ['decoder.linear_fuse.1.running_var', 'decoder.linear_extra.weight',
             'encoder.rgb.stages.0.blocks.0.attn.q.weight']
    if official:
        state = {official_key(k): v for k, v in state.items()}
        names = ['decode_head.linear_fuse.1.running_var', 'decode_head.linear_extra.weight',
                 'backbone.block1.0.attn.q.weight']
    fresh = demo_model('student', False, 1)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(fresh, {'model': state})
    message = str(error.value)
    for title, name in zip(['missing (1)', 'unexpected (1)', 'wrong shape (1)'], names):
        assert title in message and name in message
    assert '(32, 16)' in message and '(32, 32)' in message

    load_checkpoint(fresh, {'model': state}, strict=False)  # loads what fits
    assert torch.equal(fresh.decoder.linear_pred.weight, model.decoder.linear_pred.weight)
    assert not torch.equal(fresh.encoder.rgb.stages[0].blocks[0].attn.q.weight,
                           model.encoder.rgb.stages[0].blocks[0].attn.q.weight)


def test_teacher_and_student_checkpoints_are_not_mixed_up():
    teacher, student = demo_model('teacher'), demo_model('student')
    with pytest.raises(CheckpointError, match=r'is a teacher .* the model is a student'):
        load_checkpoint(student, {'model': to_official_state_dict(teacher)})
    with pytest.raises(CheckpointError, match=r'is a student .* the model is a teacher'):
        load_checkpoint(teacher, student.state_dict())


def test_backbone_size_and_class_count_are_named():
    cfg_b2 = load_config('config/nyu_b2.py')
    cfg_b4 = load_config('config/nyu_b4.py')
    with torch.device('meta'):  # shapes are all these checks need
        b2, b4 = build_model(cfg_b2, 'student'), build_model(cfg_b4, 'student')
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(b4, {'model': to_official_state_dict(b2)})
    message = str(error.value)
    assert 'mit_b2 (depths 3-4-6-3' in message and 'mit_b4 (depths 3-8-27-3' in message
    assert '--opts backbone=mit_b2' in message and 'builds' not in message
    # The official code calls its B0 'mit_b1': a B0 checkpoint given to a B1 model says so.
    with pytest.raises(CheckpointError, match=r"--opts backbone=mit_b0\) \(the official CMX/PrimKD code builds"):
        load_checkpoint(demo_model('teacher', False, 0, 'backbone=mit_b1'), demo_model('teacher').state_dict())

    trained = demo_model('teacher', False, 0, 'num_classes=5', "class_names=['a','b','c','d','e']")
    with pytest.raises(CheckpointError, match=r'predicts 5 classes .* num_classes=8'):
        load_checkpoint(demo_model('teacher'), trained.state_dict())


class Payload:
    """An arbitrary pickled object: weights-only loading must refuse it."""


def test_unreadable_inputs_are_named(tmp_path):
    model = demo_model('teacher')
    missing = tmp_path / 'nope.pth'
    with pytest.raises(CheckpointError, match='nope.pth'):
        load_checkpoint(model, missing)
    with pytest.raises(CheckpointError, match=r'nope.pth.*pretrained/segformer'):
        load_imagenet_encoder(model, missing)
    torch.save({'model': {'x': Payload()}}, tmp_path / 'pickle.pth')
    with pytest.raises(CheckpointError, match='weights-only'):
        load_checkpoint(model, tmp_path / 'pickle.pth')
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        load_checkpoint(model, {'epoch': 3})


def imagenet_state(model):
    """A SegFormer mit_b*.pth: bare MiT keys of the teacher's encoder plus a classifier."""
    state = {k[len('backbone.'):]: torch.randn(v.shape)
             for k, v in to_official_state_dict(model).items() if k.startswith('backbone.')}
    state['head.weight'] = torch.randn(1000, state['norm4.weight'].shape[0])
    state['head.bias'] = torch.randn(1000)
    return state


def test_imagenet_weights_go_into_both_branches(tmp_path):
    state = imagenet_state(demo_model('teacher'))
    torch.save(state, tmp_path / 'mit_b0.pth')
    student = demo_model('student')
    load_imagenet_encoder(student, tmp_path / 'mit_b0.pth')
    for branch in (student.encoder.rgb, student.encoder.extra):
        assert torch.equal(branch.stages[1].blocks[1].mlp.dwconv.weight,
                           state['block2.1.mlp.dwconv.dwconv.weight'])
        assert torch.equal(branch.stages[3].downsample.proj.weight,
                           state['patch_embed4.proj.weight'])

    with torch.device('meta'):
        b1 = build_model(load_config('config/demo.py', ['backbone=mit_b1']), 'teacher')
    with pytest.raises(CheckpointError,
                       match=r"holds a mit_b0 .* the model is mit_b1 .*builds 'mit_b1' as B0"):
        load_imagenet_encoder(b1, tmp_path / 'mit_b0.pth')

    del state['norm4.bias']
    state['cls_token'] = torch.zeros(1)
    torch.save(state, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match='cls_token'):
        load_imagenet_encoder(student, tmp_path / 'odd.pth')
    del state['cls_token']
    torch.save(state, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match=r'missing \(1\):\s+norm4.bias'):
        load_imagenet_encoder(student, tmp_path / 'odd.pth')


def test_files_that_are_not_zip_checkpoints_are_named_for_what_they_are_not(tmp_path):
    """val.py and --resume map checkpoints (mmap): a file that is not a zip archive must get its own
    message, not torch's advice about mmap, and a legacy-format file loads as train.py loads it."""
    model = demo_model('teacher')
    torch.save({'model': model.state_dict()}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    torch.save({'model': model.state_dict()}, tmp_path / 'zip.pth')
    (tmp_path / 'random.pth').write_bytes(bytes(range(256)) * 4)
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'torn.pth').write_bytes((tmp_path / 'zip.pth').read_bytes()[:500])
    for name, needle in (('random', 'is not a PyTorch checkpoint'), ('empty', 'is an empty file'),
                         ('torn', 'cannot be read as a weights-only checkpoint: PytorchStreamReader')):
        with pytest.raises(CheckpointError, match=needle) as error:
            read_checkpoint_file(tmp_path / f'{name}.pth', mmap=True)
        assert 'mmap' not in str(error.value) and f'{name}.pth' in str(error.value)
    fresh = demo_model('teacher', False, 1)
    load_checkpoint(fresh, tmp_path / 'legacy.pth', mmap=True)
    assert_same_state(fresh, model)
