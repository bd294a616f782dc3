"""The kernels' argument shapes at the 5B's 480P and 720P sizes, and the bytes each moves.

DiT: C = 3072 (24 heads x 128), L = 7,410 tokens at 832x480, 73 frames (19 x 15 x 26) and
27,280 at 1280x704, 121 frames (31 x 22 x 40); batch 2 (the guidance pair). Modulation
(per token in Wan2.2 TI2V), gates and RoPE tables are FP32 in the model.
VAE decoder (decoder_base_dim 256, dim_mult [1, 2, 4, 4], one latent frame per step): each
RMS norm + SiLU site of a step (not the first) by channels, frames and size.
"""

DIT_C, DIT_HEADS, DIT_HEAD_DIM = 3072, 24, 128
DIT_TOKENS = {"480p": 7410, "720p": 27280}
# latent (height, width) after the VAE's 16x compression
VAE_LATENT = {"480p": (30, 52), "720p": (44, 80)}
# (site, channels, frames, upsampling factor over the latent) along the decoder
VAE_SITES = [
    ("mid+up0", 1024, 1, 1),       # mid block and up block 0's resnets
    ("up1.norm1", 1024, 2, 2),     # up block 1's first resnet input, after the 3-D upsample
    ("up1", 512, 2, 2),
    ("up2.norm1", 512, 4, 4),
    ("up2", 256, 4, 4),
    ("up3+head", 256, 4, 8),       # up block 3 and the decoder head's norm_out
]
FP32_ARGS = {"shift", "scale", "gate", "freqs_cos", "freqs_sin"}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def _dit(size: str, batch: int = 2) -> dict[str, dict[str, tuple]]:
    l, c, d = DIT_TOKENS[size], DIT_C, DIT_HEAD_DIM
    row = (batch, l, c)
    return {
        "layernorm_modulate": {"x": row, "shift": row, "scale": row},
        "rmsnorm_rope": {"x": row, "weight": (c,), "freqs_cos": (1, l, 1, d),
                         "freqs_sin": (1, l, 1, d)},
        "gated_residual": {"x": row, "y": row, "gate": row},
    }


def _shapes() -> dict[str, dict[str, dict[str, tuple]]]:
    table: dict[str, dict[str, dict[str, tuple]]] = {
        "layernorm_modulate": {}, "rmsnorm_rope": {}, "gated_residual": {}, "rms_norm_silu": {},
    }
    for size in DIT_TOKENS:
        for name, args in _dit(size).items():
            table[name][size] = args
        h, w = VAE_LATENT[size]
        for site, c, t, up in VAE_SITES:
            table["rms_norm_silu"][f"{size}/{site}"] = {"x": (1, c, t, h * up, w * up),
                                                        "gamma": (c, 1, 1, 1)}
    return table


# SHAPES[kernel][case] = {argument: shape}, e.g. SHAPES["gated_residual"]["720p"]["x"]
SHAPES = _shapes()
HEADS = DIT_HEADS  # rmsnorm_rope's `heads` at these shapes


def bytes_moved(name: str, shapes: dict[str, tuple], dtype="bfloat16") -> int:
    """Bytes a kernel must read and write at least: every input once (modulation, gates and
    RoPE tables in FP32 as in the model, the rest in `dtype`, a torch dtype or its name) and
    the output (x's shape) once. Divide by the time for the achieved bandwidth."""
    if name not in SHAPES:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(SHAPES)}")
    if "x" not in shapes:
        raise ValueError(f"{name}: shapes must name 'x', got {sorted(shapes)}")
    dtype_name = str(dtype).removeprefix("torch.")
    if dtype_name not in ITEMSIZE:
        raise ValueError(f"{name}: dtype must be one of {', '.join(ITEMSIZE)}, got {dtype}")
    itemsize = ITEMSIZE[dtype_name]

    def numel(shape):
        n = 1
        for s in shape:
            n *= s
        return n

    total = numel(shapes["x"]) * itemsize  # the output
    for arg, shape in shapes.items():
        total += numel(shape) * (4 if arg in FP32_ARGS else itemsize)
    return total
