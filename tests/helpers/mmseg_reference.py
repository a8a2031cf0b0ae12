"""DAFormer/HRDA/MIC checkpoints as their repositories write them, and the forward pass those repositories compute.

`daformer_state_dict` makes one mmseg network with exactly the key names and shapes of the released configs
(`mit_bN` backbone from `mmseg/models/backbones/mix_transformer.py`; the DAFormer head of
`lhoyer/DAFormer/configs/_base_/models/daformer_sepaspp_mitb5.py`, or HRDA's `HRDAHead` of `lhoyer/HRDA/configs/hrda/gtaHR2csHR_hrda.py`, which
nests it under `head.` beside a `scale_attention` DAFormer head with a 1x1 conv fusion). Values are random but
well-scaled, BatchNorm statistics included, so that a wrong mapping shows in the logits.

`reference_logits` computes that network's eval-mode logits from the original key names with torch.nn.functional
alone, following the original code line by line (LayerNorm eps 1e-6 in blocks and stages and 1e-5 in the patch
embeddings and the key/value reduction; `kv` as one projection read as `reshape(B, N, 2, heads, C / heads)`;
the head's levels concatenated in order 1..4). It shares no code with duda_hf.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

MIT = {  # depths, widths (mix_transformer.py: mit_b0 .. mit_b5; heads 1, 2, 5, 8; sr 8, 4, 2, 1; mlp ratio 4)
    "mit-b0": ([2, 2, 2, 2], [32, 64, 160, 256]),
    "mit-b5": ([3, 6, 40, 3], [64, 128, 320, 512]),
}
HEADS, SR, DILATIONS, CLASSES, WIDTH = [1, 2, 5, 8], [8, 4, 2, 1], (1, 6, 12, 18), 19, 256


def _bn(state, prefix, channels, gen):
    state[prefix + "weight"] = 1 + 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "bias"] = 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "running_mean"] = 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "running_var"] = 0.5 + torch.rand(channels, generator=gen)
    state[prefix + "num_batches_tracked"] = torch.tensor(40000)


def _w(gen, *shape, fan_in=None):
    fan_in = fan_in or (shape[1] if len(shape) > 1 else shape[0])
    for size in shape[2:]:
        fan_in *= size
    return torch.randn(*shape, generator=gen) / fan_in**0.5


def _ln(state, prefix, channels, gen):
    state[prefix + "weight"] = 1 + 0.1 * torch.randn(channels, generator=gen)
    state[prefix + "bias"] = 0.1 * torch.randn(channels, generator=gen)


def _conv_module(state, prefix, cin, cout, k, gen, groups=1):
    state[prefix + "conv.weight"] = _w(gen, cout, cin // groups, k, k)
    _bn(state, prefix + "bn.", cout, gen)


def _daformer_head(state, prefix, widths, gen, *, aspp=True, width=WIDTH, classes=CLASSES):
    for i, cin in enumerate(widths):
        state[f"{prefix}embed_layers.{i}.proj.weight"] = _w(gen, width, cin)
        state[f"{prefix}embed_layers.{i}.proj.bias"] = 0.1 * torch.randn(width, generator=gen)
    cat = width * len(widths)
    if aspp:
        for k, dilation in enumerate(DILATIONS):
            p = f"{prefix}fuse_layer.aspp_modules.{k}."
            if dilation == 1:
                _conv_module(state, p, cat, width, 1, gen)
            else:
                _conv_module(state, p + "depthwise_conv.", cat, cat, 3, gen, groups=cat)
                _conv_module(state, p + "pointwise_conv.", cat, width, 1, gen)
        _conv_module(state, f"{prefix}fuse_layer.bottleneck.", len(DILATIONS) * width, width, 3, gen)
    else:  # HRDA's scale attention: fusion_cfg type 'conv', kernel 1
        _conv_module(state, f"{prefix}fuse_layer.", cat, width, 1, gen)
    state[f"{prefix}conv_seg.weight"] = _w(gen, classes, width, 1, 1)
    state[f"{prefix}conv_seg.bias"] = 0.1 * torch.randn(classes, generator=gen)


def daformer_state_dict(size: str = "mit-b0", *, hrda: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """One mmseg network (`backbone.…`, `decode_head.…`) of a released DAFormer (or HRDA) config, random values."""
    gen = torch.Generator().manual_seed(seed)
    depths, widths = MIT[size]
    state: dict[str, torch.Tensor] = {}
    cin = 3
    for i, (depth, width) in enumerate(zip(depths, widths), start=1):
        k = 7 if i == 1 else 3
        state[f"backbone.patch_embed{i}.proj.weight"] = _w(gen, width, cin, k, k)
        state[f"backbone.patch_embed{i}.proj.bias"] = 0.1 * torch.randn(width, generator=gen)
        _ln(state, f"backbone.patch_embed{i}.norm.", width, gen)
        for j in range(depth):
            p = f"backbone.block{i}.{j}."
            _ln(state, p + "norm1.", width, gen)
            state[p + "attn.q.weight"] = _w(gen, width, width)
            state[p + "attn.q.bias"] = 0.1 * torch.randn(width, generator=gen)
            state[p + "attn.kv.weight"] = _w(gen, 2 * width, width)
            state[p + "attn.kv.bias"] = 0.1 * torch.randn(2 * width, generator=gen)
            state[p + "attn.proj.weight"] = _w(gen, width, width)
            state[p + "attn.proj.bias"] = 0.1 * torch.randn(width, generator=gen)
            if SR[i - 1] > 1:
                state[p + "attn.sr.weight"] = _w(gen, width, width, SR[i - 1], SR[i - 1])
                state[p + "attn.sr.bias"] = 0.1 * torch.randn(width, generator=gen)
                _ln(state, p + "attn.norm.", width, gen)
            _ln(state, p + "norm2.", width, gen)
            state[p + "mlp.fc1.weight"] = _w(gen, 4 * width, width)
            state[p + "mlp.fc1.bias"] = 0.1 * torch.randn(4 * width, generator=gen)
            state[p + "mlp.dwconv.dwconv.weight"] = _w(gen, 4 * width, 1, 3, 3)
            state[p + "mlp.dwconv.dwconv.bias"] = 0.1 * torch.randn(4 * width, generator=gen)
            state[p + "mlp.fc2.weight"] = _w(gen, width, 4 * width)
            state[p + "mlp.fc2.bias"] = 0.1 * torch.randn(width, generator=gen)
        _ln(state, f"backbone.norm{i}.", width, gen)
        cin = width
    if hrda:
        _daformer_head(state, "decode_head.head.", widths, gen)
        _daformer_head(state, "decode_head.scale_attention.", widths, gen, aspp=False)
    else:
        _daformer_head(state, "decode_head.", widths, gen)
    return state


def training_checkpoint(student: dict, teacher: dict, imnet: dict) -> dict:
    """A DAFormer/MIC training checkpoint as mmcv's `save_checkpoint` writes it (meta, state_dict, optimizer)."""
    state = {f"model.{k}": v for k, v in student.items()}
    state.update({f"ema_model.{k}": v for k, v in teacher.items()})
    state.update({f"imnet_model.{k}": v for k, v in imnet.items()})
    meta = {
        "mmcv_version": "1.3.7",
        "time": "Thu Jan  6 10:00:00 2022",
        "iter": 40000,
        "CLASSES": ("road", "sidewalk"),
        "PALETTE": [[128, 64, 128]],
    }
    return {"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 6e-05, "params": [0]}]}}


def _layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], eps=eps)


def reference_logits(state: dict[str, torch.Tensor], images: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """Eval-mode logits (stride 4) of the mmseg network whose keys start with `prefix` (e.g. 'model.'), on
    normalised `(B, 3, H, W)` images. HRDA networks: the head path (`decode_head.head.`) only."""
    s = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    head = "decode_head.head." if "decode_head.head.conv_seg.weight" in s else "decode_head."
    return _head(s, _backbone(s, images), head)


def reference_hrda_logits(
    state: dict[str, torch.Tensor], images: torch.Tensor, detail_crop: tuple[int, int], prefix: str = ""
) -> torch.Tensor:
    """Eval-mode logits of an HRDA network as `HRDAEncoderDecoder.encode_decode` computes them with HRDA's config
    (scales [0.5, 1], `hr_slide_inference`, overlapping detail windows) and `HRDAHead.forward` without a crop box."""
    s = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    def resize(img, scale):  # HRDAEncoderDecoder.resize, mmseg's resize with a scale factor
        return img if scale == 1 else F.interpolate(img, scale_factor=scale, mode="bilinear", align_corners=False)

    # scales [0.5, 1]: i = 0 the context (whole), i = 1 the detail (extract_slide_feat)
    lr_feats = _backbone(s, resize(images, 0.5))
    h_crop, w_crop = detail_crop
    h_stride, w_stride = h_crop // 2, w_crop // 2  # hr_slide_overlapping
    bs, _, h_img, w_img = images.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    crop_imgs, crop_boxes = [], []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_imgs.append(images[:, :, y1:y2, x1:x2])
            crop_boxes.append([y1, y2, x1, x2])
    crop_feats = _backbone(s, torch.cat(crop_imgs, dim=0))
    # HRDAHead.forward: lr_seg, decode_hr (os 4), the sigmoid scale attention, the fusion
    lr_seg = _head(s, lr_feats, "decode_head.head.")
    boxes = [[int(v / 4) for v in box] for box in crop_boxes]
    h_out, w_out = max(b[1] for b in boxes), max(b[3] for b in boxes)
    crop_seg_logits = _head(s, crop_feats, "decode_head.head.")
    preds = torch.zeros((bs, crop_seg_logits.shape[1], h_out, w_out))
    count_mat = torch.zeros((bs, 1, h_out, w_out))
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        preds += F.pad(crop_seg_logits[i * bs : (i + 1) * bs], (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
        count_mat[:, :, y1:y2, x1:x2] += 1
    hr_seg = preds / count_mat
    att = torch.sigmoid(_head(s, lr_feats, "decode_head.scale_attention.", aspp=False))
    lr_seg = (1 - att) * lr_seg
    up_lr_seg = resize(lr_seg, 1 / 0.5)
    att = resize(att, 1 / 0.5)
    return att * hr_seg + up_lr_seg


def _backbone(s: dict[str, torch.Tensor], images: torch.Tensor) -> list[torch.Tensor]:
    """The original MiT's four levels (`mix_transformer.py`)."""
    x, feats = images, []
    for i in range(1, 5):
        w = s[f"backbone.patch_embed{i}.proj.weight"]
        x = F.conv2d(x, w, s[f"backbone.patch_embed{i}.proj.bias"], stride=4 if i == 1 else 2, padding=w.shape[-1] // 2)
        batch, channels, height, width = x.shape
        x = _layer_norm(x.flatten(2).transpose(1, 2), s, f"backbone.patch_embed{i}.norm.", 1e-5)
        heads, sr, j = HEADS[i - 1], SR[i - 1], 0
        while f"backbone.block{i}.{j}.norm1.weight" in s:
            p = f"backbone.block{i}.{j}."
            h = _layer_norm(x, s, p + "norm1.", 1e-6)
            tokens = h.shape[1]
            q = (
                F.linear(h, s[p + "attn.q.weight"], s[p + "attn.q.bias"])
                .reshape(batch, tokens, heads, channels // heads)
                .permute(0, 2, 1, 3)
            )
            if sr > 1:
                r = h.permute(0, 2, 1).reshape(batch, channels, height, width)
                r = F.conv2d(r, s[p + "attn.sr.weight"], s[p + "attn.sr.bias"], stride=sr).reshape(batch, channels, -1).permute(0, 2, 1)
                r = _layer_norm(r, s, p + "attn.norm.", 1e-5)
            else:
                r = h
            kv = (
                F.linear(r, s[p + "attn.kv.weight"], s[p + "attn.kv.bias"])
                .reshape(batch, -1, 2, heads, channels // heads)
                .permute(2, 0, 3, 1, 4)
            )
            attn = ((q @ kv[0].transpose(-2, -1)) * (channels // heads) ** -0.5).softmax(dim=-1)
            a = (attn @ kv[1]).transpose(1, 2).reshape(batch, tokens, channels)
            x = x + F.linear(a, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
            h = F.linear(_layer_norm(x, s, p + "norm2.", 1e-6), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])
            hidden = h.shape[-1]
            h = h.transpose(1, 2).reshape(batch, hidden, height, width)
            h = F.conv2d(h, s[p + "mlp.dwconv.dwconv.weight"], s[p + "mlp.dwconv.dwconv.bias"], padding=1, groups=hidden)
            h = F.gelu(h.flatten(2).transpose(1, 2))
            x = x + F.linear(h, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
            j += 1
        x = _layer_norm(x, s, f"backbone.norm{i}.", 1e-6)
        x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        feats.append(x)
    return feats


def _head(s: dict[str, torch.Tensor], feats: list[torch.Tensor], head: str, aspp: bool = True) -> torch.Tensor:
    """`DAFormerHead` under `head` on the four levels: the ASPP fusion (`daformer_sepaspp`), or HRDA's scale attention's
    1x1 conv-BN-ReLU fusion (`aspp=False`)."""
    size = feats[0].shape[2:]
    levels = []
    for i, f in enumerate(feats):
        n, _, h, w = f.shape
        e = F.linear(f.flatten(2).transpose(1, 2), s[f"{head}embed_layers.{i}.proj.weight"], s[f"{head}embed_layers.{i}.proj.bias"])
        e = e.permute(0, 2, 1).reshape(n, -1, h, w)
        if e.shape[2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        levels.append(e)
    x = torch.cat(levels, dim=1)

    def conv_module(t, p, padding=0, dilation=1, groups=1):
        t = F.conv2d(t, s[p + "conv.weight"], None, padding=padding, dilation=dilation, groups=groups)
        t = F.batch_norm(
            t, s[p + "bn.running_mean"], s[p + "bn.running_var"], s[p + "bn.weight"], s[p + "bn.bias"], training=False, eps=1e-5
        )
        return F.relu(t)

    if not aspp:
        x = conv_module(x, f"{head}fuse_layer.")
        return F.conv2d(x, s[f"{head}conv_seg.weight"], s[f"{head}conv_seg.bias"])
    branches = []
    for k, dilation in enumerate(DILATIONS):
        p = f"{head}fuse_layer.aspp_modules.{k}."
        if dilation == 1:
            branches.append(conv_module(x, p))
        else:
            d = conv_module(x, p + "depthwise_conv.", padding=dilation, dilation=dilation, groups=x.shape[1])
            branches.append(conv_module(d, p + "pointwise_conv."))
    x = conv_module(torch.cat(branches, dim=1), f"{head}fuse_layer.bottleneck.", padding=1)
    return F.conv2d(x, s[f"{head}conv_seg.weight"], s[f"{head}conv_seg.bias"])
