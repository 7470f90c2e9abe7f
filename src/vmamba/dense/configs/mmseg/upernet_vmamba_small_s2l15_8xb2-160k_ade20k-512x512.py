# UperNet on ADE20K, 512x512 crops, 160k iterations, with VMamba-S v2 [s2l15] (vmamba_small_s2l15).
# The authors' recipe (segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_small.py in their
# release): the Swin UperNet config with the VMamba backbone: AdamW lr 6e-5, betas (0.9, 0.999),
# weight decay 0.01 (none on norms), linear warm-up over 1500 iterations then poly decay, batch
# 16 (8 GPUs x 2; the authors ran 4 GPUs x 4), drop path 0.3, auxiliary FCN head on stage 3.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['vmamba.mmseg'], allow_failed_imports=False)

# The authors' ImageNet-1K weights (vssm_small_0229_ckpt_epoch_222.pth, top-1 83.6%): a published tag,
# downloaded once into torch hub's cache and loaded strictly (or a file: this project's or theirs).
pretrained = 'vmamba://vmamba_small_s2l15.in1k'
# The authors' trained model of this config (miou_ss 50.6, miou_ms 51.2): to test or fine-tune it, set
# load_from = 'vmamba://vmamba_small_s2l15.ade20k_upernet'  (or its URL / a downloaded file)
model = dict(
    backbone=dict(
        _delete_=True, type='vmamba_small_s2l15', out_indices=(0, 1, 2, 3), drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
