# UperNet on ADE20K, 512x512 crops, 160k iterations, with VMamba-T v2 [s1l8] (vmamba_tiny_s1l8).
# The authors' recipe (segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py in their
# release): the Swin UperNet config with the VMamba backbone: AdamW lr 6e-5, betas (0.9, 0.999),
# weight decay 0.01 (none on norms), linear warm-up over 1500 iterations then poly decay, batch
# 16 (8 GPUs x 2; the authors ran 4 GPUs x 4), drop path 0.2, auxiliary FCN head on stage 3.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['vmamba.mmseg'], allow_failed_imports=False)

# The authors' ImageNet-1K weights (vssm1_tiny_0230s_ckpt_epoch_264.pth, top-1 82.6%): a published tag,
# downloaded once into torch hub's cache and loaded strictly (or a file: this project's or theirs).
pretrained = 'vmamba://vmamba_tiny_s1l8.in1k'
# The authors' trained model of this config (miou_ss 47.9, miou_ms 48.8): to test or fine-tune it, set
# load_from = 'vmamba://vmamba_tiny_s1l8.ade20k_upernet'  (or its URL / a downloaded file)
model = dict(
    backbone=dict(
        _delete_=True, type='vmamba_tiny_s1l8', out_indices=(0, 1, 2, 3), drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
