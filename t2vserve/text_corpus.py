"""Product-listing text for training the tiny preset's sentencepiece tokenizer offline.

Chinese and English, the vocabulary of e-commerce showcase prompts: products, colours,
materials, scenes, motions, camera moves, and Wan's default negative prompt.
"""

import random

# Wan's default negative prompt (used when a request has none).
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

PRODUCTS_EN = ["cup", "thermos", "box", "bottle", "ball", "earphones", "headphones", "watch",
               "phone", "shoe", "sneaker", "bag", "backpack", "lamp", "chair", "dress", "shirt",
               "jacket", "kettle", "speaker", "camera", "laptop", "keyboard", "mouse", "perfume",
               "lipstick", "necklace", "ring", "toy", "vase", "plate", "bowl", "pan", "blender"]
PRODUCTS_ZH = ["杯子", "保温杯", "盒子", "瓶子", "球", "耳机", "无线蓝牙降噪耳机", "手表", "手机",
               "鞋子", "运动鞋", "包", "背包", "台灯", "椅子", "连衣裙", "衬衫", "夹克", "水壶",
               "音箱", "相机", "笔记本电脑", "键盘", "鼠标", "香水", "口红", "项链", "戒指", "玩具",
               "花瓶", "盘子", "碗", "平底锅", "榨汁机"]
COLORS_EN = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "silver",
             "gold", "pink", "grey", "brown"]
COLORS_ZH = ["红色", "绿色", "蓝色", "黄色", "白色", "黑色", "橙色", "紫色", "银色", "金色",
             "粉色", "灰色", "棕色"]
MATERIALS_EN = ["stainless-steel", "leather", "cotton", "wooden", "glass", "ceramic", "plastic",
                "metal", "silk", "wool"]
MATERIALS_ZH = ["不锈钢", "真皮", "纯棉", "木质", "玻璃", "陶瓷", "塑料", "金属", "丝绸", "羊毛"]
SCENES_EN = ["on a wooden table", "in a white studio", "on a grey background", "in a kitchen",
             "on a desk", "in a living room", "outdoors in sunlight", "on a marble counter"]
SCENES_ZH = ["在木桌上", "在白色摄影棚里", "在灰色背景上", "在厨房里", "在书桌上", "在客厅里",
             "在阳光下的户外", "在大理石台面上"]
MOTIONS_EN = ["rotating slowly on a turntable", "zooming in", "panning left", "panning right",
              "standing still", "steam rising", "hot water poured in", "worn on an ear",
              "close-up shot", "camera orbiting"]
MOTIONS_ZH = ["在转台上缓慢旋转", "镜头推近", "向左平移", "向右平移", "静止", "蒸汽升腾",
              "倒入热水", "佩戴在人耳上", "特写镜头", "镜头环绕", "周围环境音逐渐消失",
              "支持触控切换歌曲"]
FEATURES_ZH = ["主动降噪", "续航30小时", "触控操作", "防水", "轻便", "大容量", "快速充电", "保温12小时"]
FEATURES_EN = ["active noise cancelling", "30-hour battery", "touch control", "waterproof",
               "lightweight", "large capacity", "fast charging", "keeps warm for 12 hours"]

BRIEF_PROMPTS = [
    "一款黑色无线蓝牙降噪耳机佩戴在人耳上,周围环境音逐渐消失,支持触控切换歌曲",
    "a silver stainless-steel thermos on a wooden table, hot water poured in, steam rising",
]

# `make demo`: product shots in the vocabulary the trained tiny preset was trained on
# (t2vserve/train/synthetic.py), with an English gloss for the contact sheet's labels.
DEMO_PROMPTS = [
    ("a red cup rotating slowly on a wooden table", None),
    ("蓝色瓶子在白色摄影棚里缓慢旋转", "blue bottle rotating slowly in a white studio"),
    ("a yellow ball on a grey background, still", None),
    ("木桌上的绿色盒子，画面静止", "green box on a wooden table, still"),
    ("a purple box on a white studio background as the camera is zooming in", None),
    ("橙色保温杯在灰色背景上缓慢旋转", "orange thermos cup rotating slowly on a grey background"),
]


def corpus_lines(n_per_language: int = 4000, seed: int = 0):
    """Template sentences in both languages, plus every word alone so each gets a piece."""
    rng = random.Random(seed)
    lines = list(BRIEF_PROMPTS) + [WAN_DEFAULT_NEGATIVE_PROMPT]
    en = (COLORS_EN, MATERIALS_EN, PRODUCTS_EN, SCENES_EN, MOTIONS_EN, FEATURES_EN)
    zh = (COLORS_ZH, MATERIALS_ZH, PRODUCTS_ZH, SCENES_ZH, MOTIONS_ZH, FEATURES_ZH)
    for words in en + zh:
        lines.extend(words)
    for _ in range(n_per_language):
        c, m, p, s, mo, f = (rng.choice(w) for w in en)
        lines.append(f"a {c} {m} {p} {s}, {mo}, {f}")
        c, m, p, s, mo, f = (rng.choice(w) for w in zh)
        lines.append(f"一款{c}{m}{p}{s}，{mo}，{f}")
    return lines
