"""A trained network outside the evaluation loop: the model of a checkpoint or of an ONNX file, the
command-line options that choose how an image is predicted, and ONNX export.

Whatever runs the network (torch eager, autocast, onnxruntime), an image goes through
engine.evaluator.predict_probabilities, as in val.py: an ONNX model is wrapped so that it is called
like the torch model.

ONNX export uses torch's exporter (torch.export, then onnxscript's translation) at ONNX_OPSET. The
file's inputs are the normalised `rgb` and, for a student, `extra` (both (N, 3, H, W) float32, as
the network gets them from dataloader.transforms.network_input), its output `logits` (N, C, H, W).
The batch dimension is always dynamic; height and width are fixed to the export size unless the
export is dynamic. The file's metadata records how inputs are prepared (METADATA_KEYS: channel order,
mean and std, class names), so that a config that prepares them otherwise is refused.
"""
import argparse
import importlib.util
import json
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from models.weight_layouts import checkpoint_contents, load_checkpoint, read_checkpoint_file
from utils.constants import AMP_DTYPE_NAMES, AMP_FULL_PRECISION

from . import run_dir as rd
from .evaluator import predict_probabilities
from .run_spec import RunSpec

# The newest opset onnxruntime 1.30 runs completely; from 23 on, attention is one ONNX op.
ONNX_OPSET = 23
INPUT_NAMES = {'teacher': ('rgb',), 'student': ('rgb', 'extra')}
OUTPUT_NAME = 'logits'
# A dimension of size 1 in the example input would be fixed to 1 by torch.export: a batch of 2, and
# for a dynamic export sides of at least 64 pixels, so that the 1/32 maps are 2 pixels a side.
EXPORT_EXAMPLE_BATCH = 2
MIN_DYNAMIC_EXAMPLE_SIDE = 64
# What ONNX export and running an ONNX file need: the project's `export` extra.
ONNX_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')
# Config keys an ONNX file records (JSON values in its metadata) and must agree with at inference.
METADATA_KEYS = ('channel_order', 'norm_mean', 'norm_std', 'class_names')


class InferenceError(ValueError):
    """A model file or a setting that cannot be used; the message names the flag or file."""


def add_prediction_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of how an image is predicted, shared by val.py and tools/infer.py."""
    parser.add_argument('--scales', type=float, nargs='+', metavar='S',
                        help="input scales to average (default: the config's eval_scale_array)")
    parser.add_argument('--flip', action=argparse.BooleanOptionalAction, default=None,
                        help="also average the horizontally flipped input (default: config's eval_flip)")
    inference = parser.add_mutually_exclusive_group()
    inference.add_argument('--sliding', dest='eval_mode', action='store_const', const='sliding',
                           help='sliding-window inference with eval_crop_size / eval_stride_rate')
    inference.add_argument('--whole', dest='eval_mode', action='store_const', const='whole',
                           help="the whole image at once (default: the config's eval_mode)")
    parser.add_argument('--amp', choices=AMP_DTYPE_NAMES, default=AMP_FULL_PRECISION,
                        help='mixed-precision inference (default: none, full precision)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                        help='auto: CUDA when available (default)')
    return parser


def prediction_options(args, cfg) -> dict:
    """eval_mode, scales and flip (keyword arguments of predict_probabilities) from the flags of
    add_prediction_args, the config's where a flag is not given."""
    scales = list(args.scales or cfg.eval_scale_array)
    if any(s <= 0 for s in scales):
        raise InferenceError(f'--scales must be positive, got {scales}')
    return dict(eval_mode=args.eval_mode or cfg.eval_mode, scales=scales,
                flip=cfg.eval_flip if args.flip is None else args.flip)


def require_onnx_packages(packages=ONNX_PACKAGES) -> None:
    """InferenceError naming the packages of the `export` extra that are not installed."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise InferenceError(f"{', '.join(missing)} not installed: pip install -e '.[export]' (or the "
                             f"tested set: pip install -r requirements-lock.txt)")


# --- torch models ----------------------------------------------------------------------------

def checkpoint_model(cfg, value: str, mode: Optional[str]):
    """(model in eval mode, the checkpoint's mode, checkpoint file) for `-e value`: a checkpoint file, a run
    directory, or last | best | N in <log_dir>/<mode>/. `mode` None takes the checkpoint's own kind;
    a checkpoint of another kind than `mode` is an InferenceError."""
    lookup_mode = mode or 'student'
    try:
        paths = rd.resolve_checkpoints([value], rd.run_dir(cfg.log_dir, lookup_mode), lookup_mode)
        if len(paths) != 1:
            raise InferenceError(f'-e {value} names {len(paths)} checkpoints; give one')
        path = paths[0]
        saved_mode = checkpoint_contents(read_checkpoint_file(path, mmap=True), f"checkpoint '{path}'").mode
    except ValueError as e:  # CheckpointError included
        raise InferenceError(str(e)) from None
    if saved_mode is None:
        raise InferenceError(f"-e {path}: neither a student nor a teacher checkpoint (no encoder "
                             f"weights under this project's or the official names)")
    if mode is not None and saved_mode != mode:
        raise InferenceError(f'-e {path} is a {saved_mode} checkpoint, but --mode {mode} asks for a {mode} '
                             f'one (use --mode {saved_mode}, or leave --mode out)')
    model = RunSpec.for_evaluation(saved_mode).build_model(cfg)
    try:
        load_checkpoint(model, path, mmap=True)
    except ValueError as e:  # CheckpointError
        raise InferenceError(str(e)) from None
    return model.eval(), saved_mode, path


class LogitsOnly(nn.Module):
    """The network with the logits as its only output: what an ONNX file holds."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, rgb, extra=None):
        return self.model(rgb, extra).logits


# --- ONNX ------------------------------------------------------------------------------------

class NetworkOutput(NamedTuple):
    logits: torch.Tensor


class OnnxNetwork:
    """An ONNX file run by onnxruntime on the CPU, called as the torch model is (network(rgb) or
    network(rgb, extra) -> .logits), so that predict_probabilities drives both alike."""

    def __init__(self, path: str, threads: Optional[int] = None):
        import onnxruntime  # only needed here: torch-only installs can do without it

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise InferenceError(f"--onnx {path}: onnxruntime cannot load it: "
                                 f"{str(e).strip().splitlines()[0]}") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.mode = next((mode for mode, names in INPUT_NAMES.items() if set(inputs) == set(names)), None)
        if self.mode is None or outputs != [OUTPUT_NAME]:
            raise InferenceError(f"--onnx {path}: expected inputs {' or '.join(map(str, INPUT_NAMES.values()))}"
                                 f" and the output '{OUTPUT_NAME}' (tools/export.py), got inputs "
                                 f"{tuple(inputs)} and outputs {tuple(outputs)}")
        # Fixed dimensions are ints, dynamic ones names.
        self.input_shape = [d if isinstance(d, int) else None for d in inputs['rgb']]
        classes = self.session.get_outputs()[0].shape[1]
        self.num_classes = classes if isinstance(classes, int) else None
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def config_mismatches(self, cfg) -> list:
        """'key: file value, config value' for every recorded config key the config disagrees with."""
        mismatches = []
        for key in METADATA_KEYS:
            if key in self.metadata and json.loads(self.metadata[key]) != cfg[key]:
                mismatches.append(f'{key}: file {self.metadata[key]}, config {json.dumps(cfg[key])}')
        return mismatches

    def __call__(self, rgb: torch.Tensor, extra: Optional[torch.Tensor] = None) -> NetworkOutput:
        feed = {'rgb': rgb.float().cpu().numpy()}
        if extra is not None:
            feed['extra'] = extra.float().cpu().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], feed)
        return NetworkOutput(torch.from_numpy(logits).to(rgb.device))


def export_onnx(model: nn.Module, mode: str, cfg, path: str, size, dynamic: bool) -> None:
    """Writes `model` (eval mode, CPU) to the ONNX file `path` for inputs of `size` (height, width)
    with the METADATA_KEYS of `cfg`; `dynamic` leaves height and width free. The batch dimension is
    always free."""
    names = INPUT_NAMES[mode]
    # One tensor per input: torch.export would take a tensor passed twice for one input.
    examples = tuple(torch.randn(EXPORT_EXAMPLE_BATCH, 3, *size) for _ in names)
    axes = {0: 'batch', 2: 'height', 3: 'width'} if dynamic else {0: 'batch'}
    with warnings.catch_warnings():
        # rgb and extra share their dynamic dimensions, which the exporter reports as a warning.
        warnings.filterwarnings('ignore', message='# The axis name')
        program = torch.onnx.export(LogitsOnly(model).eval(), examples, None,
                                    input_names=list(names), output_names=[OUTPUT_NAME],
                                    opset_version=ONNX_OPSET, dynamo=True, verbose=False,
                                    dynamic_shapes={name: axes for name in names})
    program.model.metadata_props.update({key: json.dumps(cfg[key]) for key in METADATA_KEYS})
    program.save(path, external_data=False)


# --- shapes ----------------------------------------------------------------------------------

def network_input_shapes(height: int, width: int, with_extra: bool, **prediction) -> list:
    """Every (N, 3, h, w) input shape the network gets when predict_probabilities(**prediction)
    runs on an image of height x width: found by running it on shape-only (meta) tensors, so the
    answer is the evaluator's own window and padding logic, at no cost."""
    shapes = []

    def record(rgb, extra=None):
        shapes.append(tuple(rgb.shape))
        return NetworkOutput(torch.empty(rgb.shape[0], 1, *rgb.shape[-2:], device='meta'))

    image = torch.empty(1, 3, height, width, device='meta')
    predict_probabilities(record, image, image if with_extra else None, **prediction)
    return shapes


def logit_agreement(reference: torch.Tensor, other: torch.Tensor):
    """(max |difference| of two (N, C, H, W) logit tensors, fraction of pixels whose arg-max agrees)."""
    difference = (reference.float() - other.float()).abs().max().item()
    agreement = (reference.argmax(dim=1) == other.argmax(dim=1)).float().mean().item()
    return difference, agreement
