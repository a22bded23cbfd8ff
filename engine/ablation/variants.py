"""Ablation variants: what a named variant is (mode, train.py flags, config overrides, its teacher),
the built-in ones, variants from a user's file, and the order in which a grid runs them."""
import dataclasses
import json
import os
import runpy

from config import parse_overrides
from models.distill import LOGIT_LOSSES

RGB_TEACHER = 'rgb_teacher'      # the variant --teacher PATH stands in for
# Flags and config keys the grid sets itself, per cell.
GRID_FLAGS = ('--mode', '--teacher', '--resume', '--config', '-c', '--opts', '--stop-after-epoch')
GRID_KEYS = ('seed', 'log_dir', 'teacher_checkpoint')


@dataclasses.dataclass(frozen=True)
class Variant:
    mode: str = 'student'
    flags: tuple = ()
    opts: tuple = ()
    teacher: str = None   # the variant whose same-seed cell (its last checkpoint) teaches this one


BUILT_IN_VARIANTS = {
    RGB_TEACHER: Variant('teacher'),
    'rgb_teacher_b1': Variant('teacher', opts=('backbone=mit_b1',)),
    'cmx': Variant(flags=('--distillation_alpha', '0', '--distillation_beta', '0')),
    'primkd': Variant(teacher=RGB_TEACHER),
    'kl_only': Variant(flags=('--distillation_beta', '0'), teacher=RGB_TEACHER),
    'feat_only': Variant(flags=('--distillation_alpha', '0'), teacher=RGB_TEACHER),
    'mask_hint': Variant(flags=('--mask_single', 'mask_hint'), teacher=RGB_TEACHER),
    'rgbx_teacher': Variant(opts=('teacher_modality=rgbx',), teacher='cmx'),
    'wide_teacher': Variant(opts=('teacher_backbone=mit_b1',), teacher='rgb_teacher_b1'),
    'kl_confident': Variant(opts=('distillation_kl_confidence=0.9',), teacher=RGB_TEACHER),
    **{name: Variant(flags=('--distillation_alpha', f'{LOGIT_LOSSES[name].weight:g}', '--distillation_beta', '0'),
                     opts=(f'distillation_logit_loss={name}',), teacher=RGB_TEACHER)
       for name in ('kd', 'cwd', 'dist')},
}


class GridError(ValueError):
    """Bad input to the grid, said in one line before any cell runs."""


# Variants

def load_variants_file(path):
    """{name: Variant} from a JSON file or a Python file defining VARIANTS."""
    if not os.path.isfile(path):
        raise GridError(f"--variants-file '{path}' does not exist")
    try:
        if path.endswith('.py'):
            raw = runpy.run_path(path).get('VARIANTS')
        else:
            with open(path) as f:
                raw = json.load(f)
    except Exception as e:  # a user's file: any error in it is reported as one line
        raise GridError(f"--variants-file '{path}' cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise GridError(f"--variants-file '{path}': expected a dict name -> {{mode, flags, opts, teacher}}"
                        + (' named VARIANTS' if path.endswith('.py') else ''))
    variants = {}
    for name, fields in raw.items():
        where = f"--variants-file '{path}', variant '{name}'"
        if name in BUILT_IN_VARIANTS:
            raise GridError(f'{where}: the name is built in; choose another')
        if not isinstance(fields, dict) or set(fields) - {'mode', 'flags', 'opts', 'teacher'}:
            raise GridError(f'{where}: expected a dict with keys among mode, flags, opts, teacher')
        if fields.get('mode', 'student') not in ('teacher', 'student'):
            raise GridError(f"{where}: mode must be 'teacher' or 'student', got {fields['mode']!r}")
        for key in ('flags', 'opts'):
            value = fields.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise GridError(f'{where}: {key} must be a list of strings, got {value!r}')
        if not isinstance(fields.get('teacher'), (str, type(None))):
            raise GridError(f"{where}: teacher must be a variant name or null, got {fields['teacher']!r}")
        variants[name] = Variant(fields.get('mode', 'student'), tuple(fields.get('flags', [])),
                                 tuple(fields.get('opts', [])), fields.get('teacher'))
    return variants


def check_variant(name, variant):
    """The grid sets the mode, teacher, resume, log_dir and seed of every cell itself."""
    if variant.mode == 'teacher' and variant.teacher is not None:
        raise GridError(f"variant '{name}': a teacher-mode variant has no teacher")
    for flag in variant.flags:
        if flag.split('=')[0] in GRID_FLAGS:
            raise GridError(f"variant '{name}': flag {flag} is set by the grid (use the variant's mode, "
                            f"teacher and opts)")
    for key in parse_overrides(list(variant.opts)):
        if key in GRID_KEYS:
            raise GridError(f"variant '{name}': --opts {key}=... is set by the grid for every cell")


def grid_order(requested, reference, variants, external_teacher):
    """The variants the grid runs, each after its teacher: teacher-mode variants first, then the
    reference, then the others as requested. `external_teacher`: rgb_teacher is a file, not cells."""
    def dependency_order(names):
        order = []

        def visit(name, chain):
            if name in chain:
                raise GridError(f"variant '{name}': its teachers form a cycle ({' -> '.join(chain + [name])})")
            if name not in variants:
                raise GridError(f"unknown variant '{name}' (known: {', '.join(variants)}; "
                                f"more with --variants-file)")
            teacher = variants[name].teacher
            if teacher is not None and not (external_teacher and teacher == RGB_TEACHER):
                visit(teacher, chain + [name])
            if name not in order:
                order.append(name)

        for name in names:
            visit(name, [])
        return order

    closure = dependency_order([reference, *requested])
    teachers = [name for name in closure if variants[name].mode == 'teacher']
    return dependency_order(teachers + [reference] + closure)
