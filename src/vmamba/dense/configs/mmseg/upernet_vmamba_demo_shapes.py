# CPU demo: UperNet with a small VMamba (vmamba_tiny_s1l8 layout, dims 32, depths 1-1-2-1),
# trained from scratch on the generated shapes set (vmamba.dense.data, 4 classes with the
# background). Narrow heads, plain BN, and a 10x smaller loss weight on the background (84 % of
# the pixels), so it learns the three shapes in minutes on 2 cores. Run it with
# `vmamba dense demo --task seg` (which generates the data), or with the OpenMMLab tools after
# `python scripts/make_dense_demo_data.py`.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['vmamba.mmseg'], allow_failed_imports=False)

data_root = 'data/vmamba_shapes/seg/'
classes = ('background', 'rectangle', 'ellipse', 'triangle')
palette = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]]
max_iters = 800
norm_cfg = dict(type='BN', requires_grad=True)
class_weight = [0.1, 1.0, 1.0, 1.0]

model = dict(
    data_preprocessor=dict(size_divisor=32),
    backbone=dict(
        _delete_=True, type='vmamba_tiny_s1l8', dims=32, depths=(1, 1, 2, 1),
        drop_path_rate=0.0, out_indices=(0, 1, 2, 3), init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=len(classes),
                     norm_cfg=norm_cfg, loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=len(classes), norm_cfg=norm_cfg,
                        loss_decode=dict(class_weight=class_weight)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes, palette=palette),
               img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', clip_grad=dict(max_norm=5.0),
                     optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
                     paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', interval=max_iters, by_epoch=False, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
