"""Every config key with its default: the official PrimKD values for NYU Depth V2 with MiT-B4.

A config file starts from `base_config()` and changes only what differs. Keys not listed here are
rejected when the config is loaded, and each value must have the type of its default here
(an int is accepted where a float is expected; a key whose default is None has its type in NULLABLE).
Relative paths are taken from the repository root.
"""
from easydict import EasyDict

NYU_CLASSES = [
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
    'floor mat', 'clothes', 'ceiling', 'books', 'refridgerator', 'television', 'paper', 'towel',
    'shower curtain', 'box', 'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp',
    'bathtub', 'bag', 'otherstructure', 'otherfurniture', 'otherprop']

# Keys whose default is None ("derive it" or "not set") and the type they take when set.
NULLABLE = {
    'niters_per_epoch': int,      # None: num_train_imgs // batch_size + 1, as the official code
    'num_train_imgs': int,        # None: the training split file's length (set: it must be that length)
    'num_eval_imgs': int,         # None: the evaluation split file's length (set: it must be that length)
    'micro_batch_size': int,      # None: each process runs its share of the global batch at once
    'pretrained_model': str,      # None: encoders start from random weights
    'teacher_checkpoint': str,    # None: no teacher (teacher training, CMX baseline)
    'teacher_backbone': str,      # None: the student's backbone
    'log_dir': str,               # None: log/<dataset_name>_<backbone>
    'synthetic_preset': str,      # None: a real dataset, nothing is generated
    'distillation_tau': float,    # None: the logit loss's default temperature
}

# Keys holding paths; relative ones are resolved against the repository root on load.
PATH_KEYS = ('dataset_path', 'pretrained_model', 'teacher_checkpoint', 'log_dir')


def base_config() -> EasyDict:
    C = EasyDict()
    C.seed = 12345

    # Data: the official layout <dataset_path>/{RGB,HHA,Label}/NAME.ext plus split files.
    C.dataset_name = 'NYUDepthv2'
    C.dataset_path = 'datasets/NYUDepthv2'
    C.rgb_folder = 'RGB'
    C.rgb_format = '.jpg'
    C.x_folder = 'HHA'
    C.x_format = '.jpg'
    C.x_is_single_channel = False    # True for a 1-channel depth PNG, replicated to 3 channels
    C.label_folder = 'Label'
    C.label_format = '.png'
    C.gt_transform = True            # label - 1 with 0 (unlabeled) -> 255 (ignored)
    # Synthetic rooms (dataloader/synthetic_rooms.py): the preset that writes dataset_path when it is
    # absent (ensure_synthetic_dataset), and the scenes' seed, fixed apart from `seed` so that every
    # training seed sees the same scenes. None for real datasets.
    C.synthetic_preset = None
    C.synthetic_seed = 12345
    C.train_source = 'train.txt'     # relative to dataset_path
    C.eval_source = 'test.txt'
    # The splits' lengths: checked against the split files, and the epoch derives from the first.
    C.num_train_imgs = 795
    C.num_eval_imgs = 654
    C.num_classes = 40
    C.class_names = list(NYU_CLASSES)
    C.background = 255               # ignore label
    C.image_height = 480
    C.image_width = 640
    # The official loader hands images (and HHA) to the network in BGR order but normalises them
    # with the ImageNet statistics given in RGB order; released checkpoints expect that.
    C.channel_order = 'bgr'
    C.norm_mean = [0.485, 0.456, 0.406]
    C.norm_std = [0.229, 0.224, 0.225]

    # Network
    C.backbone = 'mit_b4'
    C.pretrained_model = 'pretrained/segformer/mit_b4.pth'
    C.teacher_checkpoint = 'pretrained/pre/nyu-rgb.pth'
    # The teacher that guides the student (the model in teacher_checkpoint). Its MiT size may differ
    # from the student's: the reconstruct heads map the student's stage widths to the teacher's.
    # None: the student's backbone.
    C.teacher_backbone = None
    # 'rgb': the paper's RGB-only SegFormer; 'rgbx': a CMX dual-branch model of the student's
    # architecture (e.g. a CMX baseline), fed RGB and the extra modality, whose fused stage features
    # are the feature term's targets.
    C.teacher_modality = 'rgb'
    C.decoder_embed_dim = 512
    C.drop_path_rate = 0.1
    C.bn_eps = 1e-3                  # decoder BatchNorm of the student (the official re-init)
    C.bn_momentum = 0.1
    # The official code builds the teacher's decoder without that re-init, so its BatchNorm keeps
    # eps 1e-5; the released teacher gives the official outputs only with it. Used by every RGB
    # teacher; an 'rgbx' teacher is a student-architecture model and uses bn_eps.
    C.teacher_bn_eps = 1e-5

    # Distillation (the official command line's values)
    C.distillation_alpha = 1.0       # weight of the logit term (the KL term of the paper)
    # The logit term: 'kl' (the paper's) | 'kd' | 'cwd' | 'dist' (models/distill.py, LOGIT_LOSSES)
    C.distillation_logit_loss = 'kl'
    C.distillation_tau = None        # kd/cwd/dist temperature; None: the loss's paper default
    C.distillation_beta = 0.1        # weight of the selected feature term
    C.distillation_flag = 1          # 1: KL(teacher || student), 0: KL(student || teacher)
    # Not in the paper, off by default: > 0 keeps the KL term only on pixels where the teacher's top
    # class probability reaches this value (see docs/configuration.md).
    C.distillation_kl_confidence = 0.0
    C.distillation_single = 1        # 1: the KL term is on
    C.lambda_mask = 0.75             # mask_hint: probability of keeping a position
    C.select = 'max'                 # 'max' | 'min' | 'none'
    C.mask_single = 'hint'           # 'hint' | 'mask_hint'
    C.losses = ['loss1', 'loss2', 'loss3', 'loss4']

    # Optimisation
    C.optimizer = 'AdamW'
    C.lr = 6e-5
    C.lr_power = 0.9
    C.momentum = 0.9
    C.weight_decay = 0.01
    C.batch_size = 4                 # global batch, split across processes
    # Images one process runs through the network at once; its share of batch_size is accumulated
    # over several such micro-batches per optimizer step (gradient accumulation). The recipe (global
    # batch, schedule) stays the same; BatchNorm sees the micro-batch. None: no accumulation.
    C.micro_batch_size = None
    C.nepochs = 500
    C.niters_per_epoch = None
    C.num_workers = 16
    C.train_scale_array = [0.5, 0.75, 1, 1.25, 1.5, 1.75]
    C.warm_up_epoch = 10
    C.amp = 'auto'                   # 'auto' (bf16 where the GPU supports it) | 'bf16' | 'fp16' | 'none'
    C.compile = False                # torch.compile the student
    C.channels_last = False
    # cuDNN picks the fastest convolution algorithms for the fixed 480x640 crops (as the official
    # code does); CUDA only.
    C.cudnn_benchmark = True
    # Under torchrun, a process that waits longer than this for the others (one stopped, hung or
    # lost without dying) ends the run with a message instead of waiting forever.
    C.dist_timeout_minutes = 30.0

    # Evaluation
    C.eval_step = 25                 # validate every eval_step epochs (and after the last)
    C.eval_mode = 'sliding'          # 'sliding' | 'whole'
    C.eval_stride_rate = 2 / 3
    C.eval_scale_array = [1.0]       # multi-scale setting: [0.75, 1, 1.25] with eval_flip
    C.eval_flip = False
    C.eval_crop_size = [480, 640]    # [height, width]
    # Most windows (of all scales' flips) run through the network at once: bounds the memory of
    # multi-scale + flip evaluation (SUN-RGBD at scale 1.75 with flip has 18 windows per image).
    C.eval_max_batch = 8

    # Checkpoints and logs
    # Besides last.pth and best.pth, keep epoch-N.pth every checkpoint_step epochs from
    # checkpoint_start_epoch (the official code keeps every epoch: 500 files of 1.6 GB for B4).
    C.checkpoint_start_epoch = 1
    C.checkpoint_step = 25
    C.log_dir = None
    return C
