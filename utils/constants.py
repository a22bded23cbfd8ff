"""Names and numbers that several layers share, said once. Imports nothing, so that configs can be
read and checked without torch (config/ checks its keys against these).

The tables behind some of these names live with their code (each MiT size in
models/encoders/mit.py, each logit loss in models/distill.py, each synthetic preset in
dataloader/synthetic_rooms.py); tests check that those tables and these names agree.
"""

# What a run trains (the official --mode): the RGB-only teacher or the RGB-X student it guides.
TEACHER = 'teacher'
STUDENT = 'student'
MODES = (TEACHER, STUDENT)

# The SegFormer encoder sizes.
BACKBONES = ('mit_b0', 'mit_b1', 'mit_b2', 'mit_b3', 'mit_b4', 'mit_b5')
NUM_STAGES = 4
# Stage i works at stride 4 * 2**i. An input needs this many pixels on each side to reach the last
# stage (the spatial-reduction convolutions would otherwise be larger than their input).
LAST_STAGE_STRIDE = 4 * 2 ** (NUM_STAGES - 1)

# What the teacher network sees: RGB only (the paper's teacher) or RGB and the extra modality.
TEACHER_MODALITIES = ('rgb', 'rgbx')

# Distillation: the stages a feature term may use, the logit losses, the reconstruct heads, and
# `select` (which per-stage feature term counts; 'none' for anything else: no feature term).
STAGE_LOSSES = ('loss1', 'loss2', 'loss3', 'loss4')
LOGIT_LOSS_NAMES = ('kl', 'kd', 'cwd', 'dist')
RECONSTRUCT_HEADS = ('hint', 'mask_hint')
FEATURE_SELECTS = ('max', 'min')
SELECT_CHOICES = FEATURE_SELECTS + ('none',)

# How a validation pass covers an image: windows of eval_crop_size, or the whole image at once.
EVAL_MODES = ('sliding', 'whole')

# Mixed precision: 'auto' picks bf16 where the device supports it, else full precision ('none').
AMP_FULL_PRECISION = 'none'
AMP_DTYPE_NAMES = ('bf16', 'fp16', AMP_FULL_PRECISION)
AMP_CHOICES = ('auto',) + AMP_DTYPE_NAMES

# The synthetic-room presets (config key synthetic_preset).
SYNTHETIC_PRESETS = ('depth_decisive', 'nyu_like')
