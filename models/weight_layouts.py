"""Every checkpoint layout the project reads or writes, in one place.

Layouts:
* project: `model.state_dict()` of `build_model`, saved by the trainer as
  {'format': 'primkd', 'mode': ..., 'model': state_dict, ...}.
* official PrimKD / CMX: {'model': state_dict, ...}, keys `backbone.*` (MiT names `patch_embed{k}`,
  `block{k}.{i}`, `norm{k}`; the student adds `extra_*`, `FRMs.{i}`, `FFMs.{i}`) and `decode_head.*`
  (the decoder plus the distillation heads `align_loss{k}` / `conv_loss{k}`), possibly prefixed
  `module.`. The official teacher `nyu-rgb.pth` is the single-branch model in the same style.
* SegFormer ImageNet encoders `mit_b*.pth`: bare MiT keys plus the classifier `head.*` (dropped).

Decisions:
* Distillation heads are training-only. A checkpoint's heads are loaded when the model has heads;
  a model without heads (teacher, or a student built with distill=False for evaluation) ignores
  them without complaint.
* Loading is strict by default: every missing, unexpected or wrongly shaped tensor is named in one
  error. A teacher checkpoint given to a student (or the reverse), another backbone size or another
  class count gets its own message first. `checkpoint_contents` reads those three from a checkpoint
  without a model (models.teacher checks a teacher checkpoint against the config with it).
* Everything is read with torch.load(weights_only=True): a downloaded .pth is untrusted pickle.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from utils.constants import NUM_STAGES
from utils.modules import unwrap_model

from .encoders.mit import MIT_SIZES

IMAGENET_HELP = ("download the SegFormer release's ImageNet-1k encoder weights (mit_b0.pth .. "
                 "mit_b5.pth) and put them in pretrained/segformer/, or set pretrained_model=None "
                 "to start from random weights")
WRAPPER_PREFIXES = ('module.', '_orig_mod.')  # DistributedDataParallel, torch.compile
HEADS_PREFIX = 'distill_heads.'
MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint is absent, unreadable or does not fit the model."""


# --- key names -------------------------------------------------------------------------------

def _branch_to_official(key: str) -> Optional[str]:
    """timm PVT-v2 name -> MiT name: 'stages.1.blocks.0.mlp.dwconv.weight' ->
    'block2.0.mlp.dwconv.dwconv.weight'."""
    if key.startswith('patch_embed.'):
        return 'patch_embed1.' + key[len('patch_embed.'):]
    match = re.fullmatch(r'stages\.(\d)\.(downsample|norm)\.(.+)', key)
    if match:
        stage, part, rest = match.groups()
        name = 'patch_embed' if part == 'downsample' else 'norm'
        return f'{name}{int(stage) + 1}.{rest}'
    match = re.fullmatch(r'stages\.(\d)\.blocks\.(\d+)\.(.+)', key)
    if match:
        stage, block, rest = match.groups()
        rest = re.sub(r'^mlp\.dwconv\.', 'mlp.dwconv.dwconv.', rest)
        return f'block{int(stage) + 1}.{block}.{rest}'
    return None


def _branch_from_official(key: str) -> Optional[str]:
    """MiT name -> timm PVT-v2 name (the inverse of _branch_to_official)."""
    match = re.fullmatch(r'(patch_embed|norm|block)(\d)\.(.+)', key)
    if not match:
        return None
    part, stage, rest = match.groups()
    stage = int(stage) - 1
    if not 0 <= stage < NUM_STAGES:
        return None
    if part == 'patch_embed':
        return 'patch_embed.' + rest if stage == 0 else f'stages.{stage}.downsample.{rest}'
    if part == 'norm':
        return f'stages.{stage}.norm.{rest}'
    match = re.fullmatch(r'(\d+)\.(.+)', rest)
    if not match:
        return None
    block, rest = match.groups()
    rest = re.sub(r'^mlp\.dwconv\.dwconv\.', 'mlp.dwconv.', rest)
    return f'stages.{stage}.blocks.{block}.{rest}'


def official_key(key: str) -> Optional[str]:
    """Project key -> official PrimKD/CMX key (None if the key has no official counterpart)."""
    for prefix, official_prefix in (('encoder.rgb.', 'backbone.'),
                                    ('encoder.extra.', 'backbone.extra_')):
        if key.startswith(prefix):
            branch_key = _branch_to_official(key[len(prefix):])
            return official_prefix + branch_key if branch_key else None
    for prefix, official_prefix in (('encoder.rectify.', 'backbone.FRMs.'),
                                    ('encoder.fuse.', 'backbone.FFMs.'),
                                    ('decoder.', 'decode_head.')):
        if key.startswith(prefix):
            return official_prefix + key[len(prefix):]
    match = re.fullmatch(r'distill_heads\.(loss\d)\.(align|generate)\.(.+)', key)
    if match:
        loss, part, rest = match.groups()
        return f"decode_head.{'align' if part == 'align' else 'conv'}_{loss}.{rest}"
    return None


def project_key(key: str) -> Optional[str]:
    """Official PrimKD/CMX key -> project key (None if unknown)."""
    if key.startswith('backbone.'):
        key = key[len('backbone.'):]
        for prefix, project_prefix in (('FRMs.', 'encoder.rectify.'), ('FFMs.', 'encoder.fuse.')):
            if key.startswith(prefix):
                return project_prefix + key[len(prefix):]
        branch = 'encoder.rgb.'
        if key.startswith('extra_'):
            branch, key = 'encoder.extra.', key[len('extra_'):]
        branch_key = _branch_from_official(key)
        return branch + branch_key if branch_key else None
    if key.startswith('decode_head.'):
        key = key[len('decode_head.'):]
        match = re.fullmatch(r'(align|conv)_(loss\d)\.(.+)', key)
        if match:
            part, loss, rest = match.groups()
            return f"{HEADS_PREFIX}{loss}.{'align' if part == 'align' else 'generate'}.{rest}"
        return 'decoder.' + key
    return None


def to_official_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict in the official PrimKD/CMX layout (heads included if present)."""
    state = OrderedDict()
    for key, value in unwrap_model(model).state_dict().items():
        name = official_key(key)
        if name is None:
            raise CheckpointError(f"to_official_state_dict: '{key}' has no official counterpart")
        state[name] = value
    return state


# --- what a state dict holds ------------------------------------------------------------------

class CheckpointContents:
    """Mode ('teacher': single-branch RGB, 'student': CMX dual-branch, None: no encoder keys),
    encoder size (`backbone`: a MIT_SIZES name, None if unknown) and class count read from a
    project-layout state dict."""

    def __init__(self, state: Dict[str, torch.Tensor]):
        keys = list(state)
        if any(k.startswith(('encoder.extra.', 'encoder.rectify.', 'encoder.fuse.')) for k in keys):
            self.mode = 'student'
        elif any(k.startswith('encoder.rgb.') for k in keys):
            self.mode = 'teacher'
        else:
            self.mode = None
        blocks = [set() for _ in range(NUM_STAGES)]
        for key in keys:
            match = re.match(r'encoder\.rgb\.stages\.(\d)\.blocks\.(\d+)\.', key)
            if match and int(match.group(1)) < NUM_STAGES:
                blocks[int(match.group(1))].add(int(match.group(2)))
        self.depths = tuple(len(b) for b in blocks) if all(blocks) else None
        width_keys = ['encoder.rgb.patch_embed.proj.weight'] + [
            f'encoder.rgb.stages.{s}.downsample.proj.weight' for s in range(1, NUM_STAGES)]
        self.widths = (tuple(state[k].shape[0] for k in width_keys)
                       if all(k in state for k in width_keys) else None)
        pred = state.get('decoder.linear_pred.weight')
        self.num_classes = pred.shape[0] if pred is not None else None
        self.backbone = next((name for name, size in MIT_SIZES.items()
                              if size.depths == self.depths and size.embed_dims == self.widths), None)

    def size_name(self) -> str:
        if self.backbone:
            return f"{self.backbone} ({MIT_SIZES[self.backbone].describe()})"
        return (f"an unknown MiT size (depths {'-'.join(map(str, self.depths or ()))}, "
                f"widths {'-'.join(map(str, self.widths or ()))})")


MODE_TEXT = {'teacher': 'teacher (RGB-only, single-branch)',
             'student': 'student (RGB + extra modality, CMX dual-branch)'}


def _check_fits(model_contents: CheckpointContents, contents: CheckpointContents, source: str) -> None:
    if contents.mode and contents.mode != model_contents.mode:
        raise CheckpointError(
            f"{source} is a {MODE_TEXT[contents.mode]} checkpoint but the model is a "
            f"{MODE_TEXT[model_contents.mode]}; use it with --mode {contents.mode}")
    if ((contents.depths and contents.depths != model_contents.depths)
            or (contents.widths and contents.widths != model_contents.widths)):
        message = (f"{source} holds a {contents.size_name()} encoder but the model is "
                   f"{model_contents.size_name()}; set the config's backbone to match the "
                   f"checkpoint" + (f" (--opts backbone={contents.backbone})" if contents.backbone
                                    else ''))
        if contents.backbone == 'mit_b0' and model_contents.backbone == 'mit_b1':
            message += " (the official CMX/PrimKD code builds 'mit_b1' as B0: use mit_b0)"
        raise CheckpointError(message)
    if contents.num_classes is not None and contents.num_classes != model_contents.num_classes:
        raise CheckpointError(
            f"{source} predicts {contents.num_classes} classes but the model has "
            f"num_classes={model_contents.num_classes}; use a checkpoint of the same dataset")


# --- reading ------------------------------------------------------------------------------

# How a file torch.save wrote begins: a zip archive (torch >= 1.6), or the legacy format's pickle
# (protocol 2) of torch's magic number.
ZIP_MAGIC = b'PK\x03\x04'
LEGACY_MAGIC = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'


def _file_kind(path: str) -> str:
    """'zip', 'legacy', 'empty' or 'other', from the first bytes of a file."""
    with open(path, 'rb') as f:
        head = f.read(len(LEGACY_MAGIC))
    if not head:
        return 'empty'
    if head.startswith(ZIP_MAGIC):
        return 'zip'
    return 'legacy' if head == LEGACY_MAGIC else 'other'


def _load_failure(error: Exception) -> str:
    """The part of torch.load's error that says what is wrong with the file (not its advice to load
    untrusted pickle with weights_only=False)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line.split(':', 1)[1] for line in lines if line.startswith('WeightsUnpickler error:')),
                  lines[0] if lines else type(error).__name__)
    return reason.strip().split('. ')[0].rstrip('.')


def read_checkpoint_file(path, what: str = 'checkpoint', help_text: str = '', mmap: bool = False) -> dict:
    """The dict a .pth file holds, loaded weights-only; CheckpointError naming the file otherwise,
    saying what it is not (empty, not written by torch.save, torn, holding other objects).
    `mmap` maps instead of reading (zip-format files, written by torch >= 1.6; legacy-format files
    are read whole): inspecting a training checkpoint then reads its model tensors only, not the
    optimizer state that makes up most of it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} '{path}' not found" + (f": {help_text}" if help_text
                                                                    else ''))
    try:
        kind = _file_kind(path)
    except OSError as e:
        raise CheckpointError(f"{what} '{path}' cannot be read: {e.strerror or e}") from e
    if kind == 'empty':
        raise CheckpointError(f"{what} '{path}' is an empty file, not a checkpoint")
    if kind == 'other':
        raise CheckpointError(f"{what} '{path}' is not a PyTorch checkpoint (neither the zip format of "
                              f"torch.save nor its legacy format)")
    try:
        raw = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap and kind == 'zip')
    except Exception as e:  # a torn archive, or pickle of objects other than tensors: say which file
        raise CheckpointError(f"{what} '{path}' cannot be read as a weights-only checkpoint: "
                              f"{_load_failure(e)}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{what} '{path}' holds a {type(raw).__name__}, not a state dict")
    return raw


def _state_of(raw: dict, source: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a project or official checkpoint, without wrapper prefixes."""
    state = raw.get('model') if isinstance(raw.get('model'), dict) else raw
    tensors = OrderedDict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: '{key}' is a {type(value).__name__}, not a tensor; "
                                  f"expected a state dict or {{'model': state_dict, ...}}")
        for prefix in WRAPPER_PREFIXES:
            key = key[len(prefix):] if key.startswith(prefix) else key
        tensors[key] = value
    return tensors


def _is_official(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(('backbone.', 'decode_head.')) for k in state)


def _project_state(raw: dict, source: str) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The checkpoint's state dict with project keys, and whether it was in the official layout.
    Unknown official keys keep their name, to be reported as unexpected."""
    state = _state_of(raw, source)
    official = _is_official(state)
    if official:
        state = OrderedDict((project_key(k) or k, v) for k, v in state.items())
    return state, official


def checkpoint_contents(raw: dict, source: str = 'the checkpoint') -> CheckpointContents:
    """Role, encoder size and class count of a project or official checkpoint dict (as
    read_checkpoint_file returns it)."""
    return CheckpointContents(_project_state(raw, source)[0])


def _listing(title: str, items: List[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ''
    return f"\n  {title} ({len(items)}):" + ''.join(f"\n    {item}" for item in shown) + more


def _same(key: str) -> str:
    return key


def _official_spelling(key: str) -> str:
    return official_key(key) or key


def _branch_spelling(key: str) -> str:
    return _branch_to_official(key) or key


def _match(module: nn.Module, state: Dict[str, torch.Tensor], source: str, strict: bool,
           name=_same) -> Dict[str, torch.Tensor]:
    """The tensors of `state` that fit `module`; with `strict`, any misfit is a CheckpointError that
    names every missing, unexpected and wrongly shaped key (`name` gives the file's spelling)."""
    expected = module.state_dict()
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    wrong_shape = [f"{name(k)}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                   for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if strict and (missing or unexpected or wrong_shape):
        message = f"{source} does not fit the model:"
        for title, items in (('missing', missing), ('unexpected', unexpected),
                             ('wrong shape', wrong_shape)):
            if items:
                message += _listing(title, items)
        raise CheckpointError(message + "\n  (strict=False loads the tensors that fit)")
    return {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}


def load_checkpoint(model: nn.Module, path_or_state, strict: bool = True, mmap: bool = False,
                    source: Optional[str] = None) -> dict:
    """Loads a project or official PrimKD/CMX checkpoint (path or already loaded dict) into `model`
    and returns the raw checkpoint dict (optimizer state etc. included). `source` names the
    checkpoint in errors (default: the path, or 'the checkpoint' for a dict)."""
    model = unwrap_model(model)
    if isinstance(path_or_state, dict):
        raw, source = path_or_state, source or 'the checkpoint'
    else:
        raw = read_checkpoint_file(path_or_state, mmap=mmap)
        source = source or f"checkpoint '{path_or_state}'"
    state, official = _project_state(raw, source)

    _check_fits(CheckpointContents(model.state_dict()), CheckpointContents(state), source)
    if getattr(model, 'distill_heads', None) is None:
        state = {k: v for k, v in state.items() if not k.startswith(HEADS_PREFIX)}
    spelling = _official_spelling if official else _same
    model.load_state_dict(_match(model, state, source, strict, spelling), strict=False)
    return raw


def load_imagenet_encoder(model: nn.Module, path) -> None:
    """Loads SegFormer ImageNet weights (mit_b*.pth) into the teacher's encoder or into both
    branches of the student's; the classifier `head.*` is dropped. Always strict."""
    model = unwrap_model(model)
    raw = read_checkpoint_file(path, 'ImageNet encoder weights', IMAGENET_HELP)
    source = f"ImageNet encoder weights '{path}'"
    branch_state, unknown = OrderedDict(), []
    for key, value in _state_of(raw, source).items():
        if key.startswith('head.'):
            continue
        branch_key = _branch_from_official(key)
        if branch_key is None:
            unknown.append(key)
        else:
            branch_state[branch_key] = value
    if unknown:
        raise CheckpointError(f"{source} is not a SegFormer MiT encoder:"
                              + _listing('unexpected', unknown))
    encoder = model.encoder
    contents = CheckpointContents({'encoder.rgb.' + k: v for k, v in branch_state.items()})
    model_contents = CheckpointContents({'encoder.rgb.' + k: v
                                         for k, v in encoder.rgb.state_dict().items()})
    _check_fits(model_contents, contents, source)
    branches = [encoder.rgb, encoder.extra] if encoder.takes_extra else [encoder.rgb]
    for branch in branches:
        branch.load_state_dict(_match(branch, branch_state, source, True, _branch_spelling))
