"""The fields every segmentation config has (shapes, VOC, COCO-Stuff), with their defaults.

Experiment configs start from get_config() and set what they change; the defaults train the
embedded shapes benchmark, so configs/shapes_zlss.py sets little.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Every field of a segmentation run, each with its default and what it does."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds initialisation, data order and augmentation.
  config.mode = "train_and_evaluate"  # Or 'evaluate': restore the workdir's checkpoint only.

  config.data = data = ml_collections.ConfigDict()
  data.name = "shapes"  # Dataset: 'shapes' (embedded), 'coco_stuff', 'voc_sbd'.
  data.split = "default"  # Class split: 'default' or 'block' (see spnet_jax/data/splits.py).
  data.builder_config = "default"  # TFDS builder config ('tiny' for tests).
  data.data_dir = ""  # TFDS folder; '' means $TFDS_DATA_DIR or ~/tensorflow_datasets.
  data.manual_dir = ""  # Real datasets: folder of the unpacked archives (README 'Datasets').
  data.auto_prepare = True  # Prepare on first use (real datasets only with data.manual_dir).
  data.image_mode = "minus_one_one"  # Input convention (pipeline.IMAGE_MODES).
  data.train_split = "train"  # TFDS split trained on.
  # Calibration run (SPNet's --excludeval): train on seen classes only, treat the val classes as
  # unseen, and write calibration.json with the gamma sweep on them (the test classes stay out).
  data.hold_out_val_classes = False
  # SPNet's --excludeval: the val classes are ignored in training and evaluation (seen vs unseen
  # still scored). Its last VAL_SIZE training images can be dropped with data.train_split.
  data.exclude_val_classes = False
  data.cache = True  # Keep the training records read in memory (small datasets only).
  data.init_image_size = 64  # Image side used to initialise parameters (any valid size).
  data.train = ml_collections.ConfigDict()
  data.train.warp_size = 0  # Resize to this square size first (0: keep).
  data.train.min_scale = 1.0  # Random rescale range (1.0, 1.0: off).
  data.train.max_scale = 1.0
  data.train.crop_size = 0  # Pad (ignore label) and random-crop to this size (0: off).
  data.train.flip = True  # Random horizontal flip.
  data.eval = ml_collections.ConfigDict()
  data.eval.warp_size = 0  # Network input warped to this square size (0: native resolution).
  # With warp_size: False scores labels warped to warp_size (SPNet's protocol); True upsamples
  # the logits to each image's original size and scores the original labels.
  data.eval.full_resolution = False
  data.eval.label_canvas = 0  # full_resolution: labels padded (ignore) to this square size.

  config.embeddings = emb = ml_collections.ConfigDict()
  emb.source = "attributes"  # 'attributes' (shapes) or 'files' ('npy' is an alias).
  # source='files': comma-separated .npy / SPNet .pkl matrices, one row per label value; each is
  # normalised per row, then they are concatenated and normalised again (fastText first).
  emb.paths = ""
  emb.extra_dim = 0  # Shapes: append a fixed random projection of this width to the attributes.
  emb.seed = 0  # Seed of that projection.

  # Few-label training (FLSS / GFLSS): stage two, from a zero-label run's checkpoint.
  config.fewshot = fs = ml_collections.ConfigDict()
  fs.n = 0  # Images per class in the pool (1, 2, 5, 10 or 20); 0 is zero-label training.
  fs.offset = 0  # Which draw: lists[c][offset * 20 : offset * 20 + n] (SPNet's --ishot).
  fs.init_workdir = ""  # Workdir of the zero-label run to start from (its latest checkpoint).
  fs.lists = ""  # Per-class image lists JSON ('' builds them once beside the dataset).
  fs.spnet_pickle = ""  # VOC: SPNet's inverse_dict_train.pkl for its exact lists...
  fs.spnet_train_ids = ""  # ...with its train_ids.txt.
  # 'spnet': SPNet's pool, one entry per draw in its order (seen, val, then novel classes), so an
  # image drawn for several seen classes is sampled once per class; 'distinct': each image (and
  # novel tag) once, the seen classes drawn in id order.
  fs.pool_entries = "distinct"
  # Few-label stage only: True continues the zero-label run's optimiser state (SGD momentum), as
  # SPNet's --continue-from does; False starts with a fresh optimiser. The schedule restarts.
  fs.keep_optimizer_state = False

  # Self-training (transductive zero-label, as SPNet+ST / STRICT): from a zero-label run, ignore
  # pixels get unseen-class pseudo-labels where the model is most confident.
  config.selftrain = st = ml_collections.ConfigDict()
  st.fraction = 0.0  # Top fraction p of each unseen class's candidate pixels labelled (0: off).
  st.init_workdir = ""  # Workdir of the zero-label run to continue from.

  config.model = model = ml_collections.ConfigDict()
  model.backbone = "tiny"  # 'resnet101', 'vgg16' or 'tiny'.
  model.stride_in_3x3 = False  # ResNet: torchvision layout (stride in the 3x3 conv, not the 1x1).
  # Converted weights to start from (python -m spnet_jax.interop.convert ...); '' for random init.
  model.init_checkpoint = ""
  model.width = 48  # Tiny backbone channels.
  model.dilations = (1, 2, 4, 8)  # Tiny backbone: one residual block per dilation.
  model.embedding_head = "aspp"  # 'aspp', 'aspp_l' or 'conv1x1': emits d_w channels.
  model.aspp_rates = (1, 2)  # Dilations of the ASPP branches (at output stride 4).
  # 'projection' (SPNet), 'learned' (trainable 1x1 classifier on the d_w features) or
  # 'deeplab' (the embedding head emits class logits directly, as DeepLab-v2).
  model.classifier = "projection"
  model.learned_head_width = 0  # Learned classifier: feature width before it (0: d_w).
  model.msc_scales = ()  # Extra multi-scale input scales (SPNet: (0.5, 0.75)); () is off.
  model.dtype = "float32"  # Compute dtype ('bfloat16' on TPU/GPU); parameters stay float32.
  # Dilated convs: 'auto' (dense convs over phases on GPUs, one matmul per kernel tap on CPUs
  # for convs of 128+ channels, native otherwise), 'dilated', 'space_to_batch' or 'taps'.
  # Same parameters and results; only the speed differs.
  model.atrous_conv = "auto"
  # Kernel gradients: 'auto' (one matmul per kernel tap on CPUs for 1x1 convs and convs of 128+
  # channels, native otherwise), 'native' or 'taps'. Same results; only the speed differs.
  model.conv_kernel_grad = "auto"

  config.loss = loss = ml_collections.ConfigDict()
  loss.name = "cross_entropy"  # 'cross_entropy' (SPNet) or 'hvsl' (hinge baseline).
  loss.label_resolution = "input"  # 'input': upsample logits; 'logits': downsample labels.

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "adam"  # 'sgd' (momentum) or 'adam'.
  opt.base_lr = 2e-3  # Base learning rate.
  opt.schedule = "warmup_cosine"  # 'poly', 'warmup_cosine' or 'constant'.
  opt.warmup_steps = 100  # Linear warm-up (warmup_cosine).
  opt.final_lr_fraction = 0.01  # warmup_cosine ends at base_lr times this.
  opt.poly_power = 0.9  # Exponent of the poly schedule.
  opt.schedule_steps = 0  # Steps the schedule decays over (SPNet's ITER_MAX); 0: train.num_steps.
  opt.schedule_update_every = 1  # Hold the rate for this many steps (SPNet's poly: 10).
  opt.momentum = 0.9  # SGD momentum.
  opt.adam_b1 = 0.9
  opt.adam_b2 = 0.999
  opt.adam_eps = 1e-8
  opt.weight_decay = 0.0  # Coupled weight decay (added to the gradient) on kernels.
  opt.decay_biases = False  # Also decay biases.
  opt.grad_clip_norm = 1.0  # Clip the global gradient norm (0: off).
  # Learning-rate multiplier per parameter group (DeepLab-v2: 1 / 2 / 10 / 20).
  opt.lr_multipliers = ml_collections.ConfigDict(
    {"backbone_kernel": 1.0, "backbone_bias": 1.0, "head_kernel": 1.0, "head_bias": 1.0}
  )

  config.train = tr = ml_collections.ConfigDict()
  tr.batch_size = 16  # Global batch (images per update, all processes).
  tr.accumulation_steps = 1  # Micro-batches per update (SPNet's iter_size).
  tr.num_steps = 2000  # Optimiser updates.
  tr.log_every_steps = 100  # Log the training loss every this many steps...
  tr.log_every_secs = 20.0  # ...or this many seconds, whichever comes first.
  tr.checkpoint_every_steps = 500  # Save a checkpoint every this many steps (and at the end).
  tr.max_checkpoints = 2  # Checkpoints kept on disk.

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 64  # Global evaluation batch.
  ev.test_split = "test"  # Split reported.
  ev.calibration_split = "validation"  # Split gamma is chosen on ('' uses eval.gamma).
  ev.gamma = 0.0  # Calibration factor when calibration_split is ''.
  # calibration.json of a run with data.hold_out_val_classes=True: use its gamma (tuned on the
  # held-out val classes, the paper's way) instead of a sweep here.
  ev.gamma_file = ""
  ev.gamma_step = 0.05  # Calibration sweep 0, step, ..., gamma_max.
  ev.gamma_max = 1.0
  ev.checkpoint_step = 0  # mode='evaluate': step to restore (0: latest).
  return config
