"""The registered models: the XMAG student, the pathology teachers it is compared with, and the
small and open encoders a user compares it with (H0-mini, Phikon-v2, Midnight-12k, DINOv2).

Each entry is data only. Parameter counts are those of the full configuration built by
timm (checked by the tests on the ``meta`` device); licences are the model cards' terms.
Layer arguments are names (``"swiglu_packed"``, ``"silu"``) resolved when the model is built.
"""

from __future__ import annotations

from .registry import ModelSpec, register_model

__all__ = [
    "DINOV2_VITB14", "H0_MINI", "H_OPTIMUS_0", "MIDNIGHT_12K", "PHIKON_V2", "UNI", "UNI2_H", "VIRCHOW2",
    "XMAG",
]

_NC_ND = "CC-BY-NC-ND-4.0"
#: Tiny configurations keep the patch size and image size (so the token grid is the real
#: one) and shrink width and depth; everything else goes through the same code.
_TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}

XMAG = register_model(
    ModelSpec(
        name="xmag",
        architecture="vit_base_patch14_dinov2",
        arch_kwargs={"img_size": 224, "num_classes": 0},
        tiny_kwargs=_TINY,
        embed_dim=768,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=2.0,
        embedding="cls",
        num_register_tokens=0,
        licence="inherits UNI2-h terms (CC-BY-NC-ND-4.0); see the model card",
        licence_note=(
            "A student distilled from UNI2-h is treated as bound by UNI2-h's non-commercial, "
            "no-derivatives terms; read the model card before any use."
        ),
        gated=False,
        commercial_use=False,
        hf_id="AI4PATH/XMAG",
        param_count="86M",
        checkpoint_format="dinov2",
        distilled_from="uni2-h",
        role="student",
        description=(
            "XMAG student (arXiv 2509.23097): DINOv2 ViT-B/14 distilled at 5x (2.0 um/px) from "
            "UNI2-h at 20x; 16x16 tokens at 224 px, 768-d CLS."
        ),
    )
)

UNI2_H = register_model(
    ModelSpec(
        name="uni2-h",
        architecture="vit_giant_patch14_224",
        arch_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        tiny_kwargs=_TINY,
        embed_dim=1536,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=0.5,
        embedding="cls",
        num_register_tokens=8,
        licence=_NC_ND,
        gated=True,
        commercial_use=False,
        hf_id="MahmoodLab/UNI2-h",
        param_count="681M",
        role="teacher",
        description="UNI2-h (Mahmood Lab): ViT/14, 1536-d, 24 blocks, SwiGLU, 8 registers; the XMAG teacher.",
    )
)

UNI = register_model(
    ModelSpec(
        name="uni",
        architecture="vit_large_patch16_224",
        arch_kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        tiny_kwargs=_TINY,
        embed_dim=1024,
        grid=(14, 14),
        patch_size=16,
        img_size=224,
        native_mpp=0.5,
        embedding="cls",
        licence=_NC_ND,
        gated=True,
        commercial_use=False,
        hf_id="MahmoodLab/UNI",
        param_count="303M",
        description="UNI (Mahmood Lab): ViT-L/16, 1024-d CLS.",
    )
)

VIRCHOW2 = register_model(
    ModelSpec(
        name="virchow2",
        architecture="vit_huge_patch14_224",
        arch_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
            "reg_tokens": 4,
            "dynamic_img_size": True,
        },
        tiny_kwargs=_TINY,
        embed_dim=2560,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=0.5,
        embedding="cls+mean",
        num_register_tokens=4,
        licence=_NC_ND,
        gated=True,
        commercial_use=False,
        hf_id="paige-ai/Virchow2",
        param_count="631M",
        description="Virchow2 (Paige): ViT-H/14, SwiGLU, 4 registers; CLS + mean patch token = 2560-d.",
    )
)

H_OPTIMUS_0 = register_model(
    ModelSpec(
        name="h-optimus-0",
        architecture="vit_giant_patch14_reg4_dinov2",
        arch_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "dynamic_img_size": False,
            "num_classes": 0,
        },
        tiny_kwargs=_TINY,
        embed_dim=1536,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=0.5,
        embedding="cls",
        num_register_tokens=4,
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        licence="Apache-2.0",
        gated=False,
        commercial_use=True,
        hf_id="bioptimus/H-optimus-0",
        param_count="1.1B",
        description="H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, 1536-d CLS; Apache-2.0.",
    )
)

# ---- small and open encoders a user compares the student with ------------------------------
H0_MINI = register_model(
    ModelSpec(
        name="h0-mini",
        architecture="vit_base_patch14_reg4_dinov2",
        # the model card's timm call: SwiGLUPacked MLP, SiLU; the MLP ratio is timm's default (4),
        # not checked against the gated weights here: a mismatch is reported key by key on load
        arch_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "mlp_layer": "swiglu_packed",
            "act_layer": "silu",
            "dynamic_img_size": True,
        },
        tiny_kwargs=_TINY,
        embed_dim=1536,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=0.5,
        embedding="cls+mean",
        num_register_tokens=4,
        mean=(0.707223, 0.578729, 0.703617),
        std=(0.211883, 0.230117, 0.177517),
        licence=_NC_ND,
        gated=True,
        commercial_use=False,
        hf_id="bioptimus/H0-mini",
        param_count="72M",
        description=(
            "H0-mini (Bioptimus): ViT-B/14 with 4 registers distilled from H-optimus-0 at 20x;"
            " CLS + mean patch token = 1536-d."
        ),
    )
)

PHIKON_V2 = register_model(
    ModelSpec(
        name="phikon-v2",
        architecture="vit_large_patch16_224",
        arch_kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        tiny_kwargs=_TINY,
        embed_dim=1024,
        grid=(14, 14),
        patch_size=16,
        img_size=224,
        native_mpp=0.5,
        embedding="cls",
        licence="Owkin-NC (non-commercial; see the model card)",
        gated=False,
        commercial_use=False,
        hf_id="owkin/phikon-v2",
        param_count="303M",
        checkpoint_format="dinov2",  # a transformers Dinov2Model: names translated on load
        description="Phikon-v2 (Owkin): DINOv2 ViT-L/16 on 460M public tiles at 20x, 1024-d CLS.",
    )
)

MIDNIGHT_12K = register_model(
    ModelSpec(
        name="midnight-12k",
        architecture="vit_giant_patch14_dinov2",
        arch_kwargs={"img_size": 224, "num_classes": 0},
        tiny_kwargs=_TINY,
        embed_dim=3072,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=0.5,
        embedding="cls+mean",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        licence="MIT",
        gated=False,
        commercial_use=True,
        hf_id="kaiko-ai/midnight",
        param_count="1.1B",
        checkpoint_format="dinov2",  # a transformers Dinov2Model (from dinov2-giant): translated
        description=(
            "Midnight-12k (kaiko.ai): DINOv2 ViT-g/14 trained on TCGA alone (12k slides);"
            " CLS + mean patch token = 3072-d; MIT."
        ),
    )
)

DINOV2_VITB14 = register_model(
    ModelSpec(
        name="dinov2-vitb14",
        architecture="vit_base_patch14_dinov2",
        arch_kwargs={"img_size": 224, "num_classes": 0},
        tiny_kwargs=_TINY,
        embed_dim=768,
        grid=(16, 16),
        patch_size=14,
        img_size=224,
        native_mpp=2.0,  # natural images, no scale of its own: run at the student's 5x
        embedding="cls",
        licence="Apache-2.0",
        gated=False,
        commercial_use=True,
        hf_id="facebook/dinov2-base",
        param_count="86M",
        checkpoint_format="dinov2",  # transformers names, 37x37 positions resampled to 16x16
        role="student",
        description=(
            "DINOv2 ViT-B/14 (Meta), natural images: the XMAG student's starting point, before"
            " distillation; 768-d CLS."
        ),
    )
)
