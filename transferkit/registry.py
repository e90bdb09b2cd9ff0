"""The backbone registry: every supported ImageNet backbone as one data entry.

A :class:`BackboneSpec` holds everything needed to build, load and cut one
``keras.applications`` model: its constructor, the variant arguments it takes
(e.g. MobileNet ``alpha``), its default input size, its preprocessing, the
official weight-file names, URLs and checksums, and its ordered *layer groups*
(the cut points a freeze plan speaks in). Nothing here imports TensorFlow;
:func:`transferkit.backbones.load_backbone` turns a spec into a Keras 3 model.

Layer groups are ``(name, regex)`` pairs in input→output order. A group holds
the layers from the end of the previous group up to its *end*: the first point
at or after the last layer whose name matches ``regex`` where the network
narrows to a single tensor (so that a model cut there has one input). Matching
by pattern rather than listing layer names keeps one entry valid for every
depth variant (EfficientNet B0 and B7 share it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

from transferkit.errors import RecipeError, UnknownBackboneError

__all__ = [
    "BackboneSpec",
    "Registry",
    "REGISTRY",
    "get_backbone",
    "list_backbones",
    "PREPROCESSING_MODES",
    "HUB_PREFIX",
    "HUB_RANGES",
    "is_hub",
]

#: How each preprocessing mode maps raw RGB pixels in [0, 255] to network input.
#: ``builtin`` models (EfficientNet, ConvNeXt, MobileNetV3) rescale internally.
PREPROCESSING_MODES = ("tf", "torch", "caffe", "builtin")

#: Prefix of a TF-Hub backbone name: ``hub:<url | folder | registry name>``.
HUB_PREFIX = "hub:"
#: Pixel ranges a Hub backbone may declare, by name.
HUB_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}


def is_hub(backbone: Any) -> bool:
    """Whether a backbone name is a TF-Hub backbone (``hub:...``).

    Args:
        backbone: A backbone name (or anything else, which is not one).

    Returns:
        True for a string starting with :data:`HUB_PREFIX`.
    """
    return isinstance(backbone, str) and backbone.startswith(HUB_PREFIX)


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything transferkit knows about one ImageNet backbone.

    Attributes:
        name: Registry name, lower case with underscores (``"mobilenet_v2"``).
        family: Family shown in listings (``"MobileNet"``).
        constructor: Attribute of ``keras.applications`` that builds it.
        module: Submodule of ``keras.applications`` holding ``preprocess_input``.
        default_size: Input side the ImageNet weights were trained at.
        min_size: Smallest input side the architecture accepts.
        preprocessing: One of :data:`PREPROCESSING_MODES`.
        layer_groups: Ordered ``(group, regex)`` cut points (module docstring).
        weights_file: Official file name of the with-top weights, a
            ``str.format`` template over the variant fields
            (``alpha``, ``alpha_text``, ``rows``, ``minimalistic``).
        weights_file_no_top: The same for the no-top weights.
        weights_url: URL template of the with-top file.
        weights_url_no_top: URL template of the no-top file.
        weight_sizes: Input sides with official files; the no-top weights of
            a fully convolutional model load at any size all the same.
        variants: ``(argument, allowed values)`` pairs; the first value is
            the default.
        file_hashes: Official checksum (md5 or sha256, as Keras publishes
            them) per file name, checked after a download.
        hub_handle: A TF-Hub handle of the same architecture (ImageNet
            feature vector, default variant), if one is known: use it with
            ``--backbone hub:<name>``.
        hub_range: The pixel range that Hub model takes (``"0,1"``).
        paper: Short reference shown in listings.
    """

    name: str
    family: str
    constructor: str
    module: str
    default_size: int
    min_size: int
    preprocessing: str
    layer_groups: tuple[tuple[str, str], ...]
    weights_file: str
    weights_file_no_top: str
    weights_url: str
    weights_url_no_top: str
    weight_sizes: tuple[int, ...] = ()
    variants: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    file_hashes: Mapping[str, str] = field(default_factory=dict)
    hub_handle: str | None = None
    hub_range: str | None = None
    paper: str = ""

    @property
    def group_names(self) -> tuple[str, ...]:
        """Names of the layer groups, input to output."""
        return tuple(name for name, _ in self.layer_groups)

    def resolve_variant(self, **variant: Any) -> dict[str, Any]:
        """Fill in defaults and check variant arguments.

        Args:
            **variant: Variant arguments such as ``alpha=0.35``.

        Returns:
            Every variant argument of this backbone, defaults filled in.

        Raises:
            RecipeError: For an argument this backbone does not take, or a
                value without official weights.
        """
        allowed = dict(self.variants)
        unknown = sorted(set(variant) - set(allowed))
        if unknown:
            takes = ", ".join(allowed) if allowed else "no variant arguments"
            raise RecipeError(
                f"Backbone {self.name!r} does not take {', '.join(unknown)}; "
                f"it takes {takes}."
            )
        resolved = {}
        for arg, values in self.variants:
            value = variant.get(arg, values[0])
            if value is None:
                value = values[0]
            if isinstance(values[0], float):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = None
            if value not in values:
                raise RecipeError(
                    f"Backbone {self.name!r} has ImageNet weights for {arg} in "
                    f"{list(values)}, got {variant.get(arg)!r}. Pick one of those."
                )
            resolved[arg] = value
        return resolved

    def weight_file_names(
        self, *, include_top: bool, size: int, **variant: Any
    ) -> tuple[str, ...]:
        """Official weight-file names to look for, best first.

        For an input size with its own official file that file comes first;
        the default-size file follows (no-top weights load at any size).

        Args:
            include_top: Whether the ImageNet classifier is included.
            size: Requested input side in pixels.
            **variant: Variant arguments (see :meth:`resolve_variant`).

        Returns:
            Candidate file names, without duplicates.
        """
        fields = _template_fields(self.resolve_variant(**variant))
        template = self.weights_file if include_top else self.weights_file_no_top
        sizes = [self.default_size]
        if size in self.weight_sizes and size != self.default_size:
            sizes.insert(0, size)
        if include_top:
            sizes = [self.default_size]
        names = [template.format(rows=rows, **fields) for rows in sizes]
        return tuple(dict.fromkeys(names))

    def weight_url(self, file_name: str, *, include_top: bool) -> str:
        """Official download URL of ``file_name``."""
        template = self.weights_url if include_top else self.weights_url_no_top
        return template.format(file=file_name)


def _template_fields(variant: Mapping[str, Any]) -> dict[str, str]:
    alpha = variant.get("alpha", 1.0)
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha, "")
    return {
        "alpha": str(float(alpha)),
        "alpha_text": alpha_text,
        "minimalistic": "_minimalistic" if variant.get("minimalistic") else "",
    }


class Registry(Mapping[str, BackboneSpec]):
    """A read-only mapping of backbone names to specs.

    Extensions build their own ``Registry(REGISTRY.values() + (my_spec,))``
    rather than mutating a shared one.

    Args:
        specs: The entries; names must be unique.

    Raises:
        ValueError: On a duplicate name.
    """

    def __init__(self, specs: Iterable[BackboneSpec]):
        table: dict[str, BackboneSpec] = {}
        for spec in specs:
            if spec.name in table:
                raise ValueError(f"Duplicate backbone name {spec.name!r}.")
            table[spec.name] = spec
        self._table = MappingProxyType(table)

    def __getitem__(self, name: str) -> BackboneSpec:
        key = _normalise(name)
        if key in self._table:
            return self._table[key]
        close = difflib.get_close_matches(key, list(self._table), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownBackboneError(
            f"Unknown backbone {name!r}.{hint} `transferkit backbones` lists all "
            f"{len(self._table)}; a Hub model is given as 'hub:<handle-or-folder>'."
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalise(name) in self._table


def _normalise(name: str) -> str:
    """Accept Keras spellings: ``MobileNetV2`` and ``mobilenet-v2`` both work."""
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key.replace("_", ""), key)


# ----------------------------------------------------------------------------
# The entries. Helpers below only expand families; each spec is plain data.


def _hashes(*pairs: tuple[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(pairs))


def _blocks(prefix: str, count: int, start: int = 1, pattern: str = "") -> tuple:
    pattern = pattern or "^{prefix}{i}_"
    return tuple(
        (f"{prefix}{i}", pattern.format(prefix=prefix, i=i))
        for i in range(start, start + count)
    )


def _resnet_groups(stages: tuple[int, ...], v2: bool) -> tuple:
    groups: list[tuple[str, str]] = [("stem", r"^(conv1|pool1)_")]
    for stage, count in zip((2, 3, 4, 5), stages):
        groups += [
            (f"conv{stage}_block{b}", rf"^conv{stage}_block{b}_")
            for b in range(1, count + 1)
        ]
    if v2:
        groups.append(("top", r"^post_"))
    return tuple(groups)


def _mobilenet_v3_groups(blocks: int) -> tuple:
    return (
        ("stem", r"^(conv|conv_bn)$"),
        ("block_0", r"^expanded_conv_[a-z]"),
        *_blocks("block_", blocks - 1, pattern="^expanded_conv_{i}_"),
        ("top", r"^(conv_1|conv_1_bn)$"),
    )


def _efficientnet_groups(stages: int) -> tuple:
    return (
        ("stem", r"^stem_"),
        *_blocks("block", stages, pattern="^{prefix}{i}[a-z]_"),
        ("top", r"^top_"),
    )


def _file_spec(
    name: str,
    family: str,
    constructor: str,
    module: str,
    size: int,
    preprocessing: str,
    groups: tuple,
    top: str,
    no_top: str,
    base_url: str,
    *,
    top_hash: str | None = None,
    no_top_hash: str | None = None,
    min_size: int = 32,
    paper: str = "",
    url_names: tuple[str, str] | None = None,
) -> BackboneSpec:
    hashes = {}
    if top_hash:
        hashes[top] = top_hash
    if no_top_hash:
        hashes[no_top] = no_top_hash
    url_top, url_no_top = url_names or ("{file}", "{file}")
    return BackboneSpec(
        name=name,
        family=family,
        constructor=constructor,
        module=module,
        default_size=size,
        min_size=min_size,
        preprocessing=preprocessing,
        layer_groups=groups,
        weights_file=top,
        weights_file_no_top=no_top,
        weights_url=base_url + url_top,
        weights_url_no_top=base_url + url_no_top,
        weight_sizes=(size,),
        file_hashes=MappingProxyType(hashes),
        paper=paper,
    )


_MOBILENET_V3_HASHES = {
    "small_224_1.0": ("8768d4c2e7dee89b9d02b2d03d65d862", "d3e8ec802a04aa4fc771ee12a9a9b836"),
    "small_224_0.75": ("cb65d4e5be93758266aa0a7f2c6708b7", "ebdb5cc8e0b497cd13a7c275d475c819"),
    "small_minimalistic_224_1.0": ("99cd97fb2fcdad2bf028eb838de69e37", "cde8136e733e811080d9fcd8a252f7e4"),
    "large_224_1.0": ("59e551e166be033d707958cf9e29a6a7", "07fb09a5933dd0c8eaafa16978110389"),
    "large_224_0.75": ("765b44a33ad4005b3ac83185abf1d0eb", "40af19a13ebea4e2ee0c676887f69a2e"),
    "large_minimalistic_224_1.0": ("675e7b876c45c57e9e63e6d90a36599c", "ec5221f64a2f6d1ef965a614bdae7973"),
}


def _mobilenet_v3(kind: str, blocks: int) -> BackboneSpec:
    stem = f"weights_mobilenet_v3_{kind}{{minimalistic}}_224_{{alpha}}_float"
    hashes = {}
    for key, (top, no_top) in _MOBILENET_V3_HASHES.items():
        if key.startswith(kind + "_"):
            hashes[f"weights_mobilenet_v3_{key}_float.h5"] = top
            hashes[f"weights_mobilenet_v3_{key}_float_no_top_v2.h5"] = no_top
    return BackboneSpec(
        name=f"mobilenet_v3_{kind}",
        family="MobileNetV3",
        constructor=f"MobileNetV3{kind.capitalize()}",
        module="mobilenet_v3",
        default_size=224,
        min_size=32,
        preprocessing="builtin",
        layer_groups=_mobilenet_v3_groups(blocks),
        weights_file=stem + ".h5",
        weights_file_no_top=stem + "_no_top_v2.h5",
        weights_url=_KERAS_APPS + "mobilenet_v3/{file}",
        weights_url_no_top=_KERAS_APPS + "mobilenet_v3/{file}",
        weight_sizes=(224,),
        variants=(("alpha", (1.0, 0.75)), ("minimalistic", (False, True))),
        file_hashes=MappingProxyType(hashes),
        paper="Howard et al. 2019, Searching for MobileNetV3",
    )


_EFFICIENTNET = {  # variant: (size, top md5, no-top md5)
    "b0": (224, "902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": (240, "1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": (260, "b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": (300, "ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": (380, "18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": (456, "ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": (528, "165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": (600, "8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}

_EFFICIENTNET_V2 = {  # variant: (size, stages, top md5, no-top md5)
    "b0": (224, 6, "21ecbf6da12460d5c40bb2f29ceb2188", "893217f2bb855e2983157299931e43ff"),
    "b1": (240, 6, "069f0534ff22adf035c89e2d9547a9dc", "0e80663031ca32d657f9caa404b6ec37"),
    "b2": (260, 6, "424e49f28180edbde1e94797771950a7", "1dfe2e7a5d45b6632553a8961ea609eb"),
    "b3": (300, 6, "1f1fc43bd98a6e4fd8fdfd551e02c7a0", "f6abf7b5849ac99a89b50dd3fd532856"),
    "s": (384, 6, "e1d88a8495beba45748fedd0cecbe016", "af0682fb74e8c54910f2d4393339c070"),
    "m": (480, 7, "a3bf6aa3276309f4fc6a34aa114c95cd", "1b8dc055df72dde80d614482840fe342"),
    "l": (480, 7, "27e6d408b53c7ebc868fefa357689935", "b0b66b5c863aef5b46e8608fe1711615"),
}

_RESNET = {  # name: (constructor, stages, top md5, no-top md5)
    "resnet50": ("ResNet50", (3, 4, 6, 3), "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("ResNet101", (3, 4, 23, 3), "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("ResNet152", (3, 8, 36, 3), "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("ResNet50V2", (3, 4, 6, 3), "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("ResNet101V2", (3, 4, 23, 3), "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("ResNet152V2", (3, 8, 36, 3), "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}

_VGG = {  # depth: (top md5, no-top md5)
    16: ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
    19: ("cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
}

_DENSENET = {  # depth: (top md5, no-top md5)
    121: ("9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
    169: ("d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b"),
    201: ("1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
}

_CONVNEXT = {  # size: (top sha256, no-top sha256)
    "tiny": ("8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff", "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1"),
    "small": ("ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c", "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab"),
    "base": ("52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6", "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45"),
    "large": ("070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6", "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd"),
}

_NASNET_MOBILE_GROUPS = (
    ("stem", r"^reduction_concat_stem_2$"),
    *_blocks("normal_", 4, start=0, pattern="^normal_concat_{i}$"),
    ("reduce_4", r"^reduction_concat_reduce_4$"),
    *_blocks("normal_", 4, start=5, pattern="^normal_concat_{i}$"),
    ("reduce_8", r"^reduction_concat_reduce_8$"),
    *_blocks("normal_", 4, start=9, pattern="^normal_concat_{i}$"),
)

_SPECS: tuple[BackboneSpec, ...] = (
    BackboneSpec(
        name="mobilenet",
        family="MobileNet",
        constructor="MobileNet",
        module="mobilenet",
        default_size=224,
        min_size=32,
        preprocessing="tf",
        layer_groups=(
            ("stem", r"^conv1"),
            *_blocks("block_", 13, pattern="^conv_(dw|pw|pad)_{i}(_|$)"),
        ),
        weights_file="mobilenet_{alpha_text}_{rows}_tf.h5",
        weights_file_no_top="mobilenet_{alpha_text}_{rows}_tf_no_top.h5",
        weights_url=_KERAS_APPS + "mobilenet/{file}",
        weights_url_no_top=_KERAS_APPS + "mobilenet/{file}",
        weight_sizes=(128, 160, 192, 224),
        variants=(("alpha", (1.0, 0.75, 0.5, 0.25)),),
        paper="Howard et al. 2017, MobileNets",
    ),
    BackboneSpec(
        name="mobilenet_v2",
        family="MobileNetV2",
        constructor="MobileNetV2",
        module="mobilenet_v2",
        default_size=224,
        min_size=32,
        preprocessing="tf",
        layer_groups=(
            ("stem", r"^(Conv1|bn_Conv1|Conv1_relu)$"),
            ("block_0", r"^expanded_conv_"),
            *_blocks("block_", 16),
            ("top", r"^(Conv_1|Conv_1_bn|out_relu)$"),
        ),
        weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}.h5",
        weights_file_no_top=(
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"
        ),
        weights_url=_KERAS_APPS + "mobilenet_v2/{file}",
        weights_url_no_top=_KERAS_APPS + "mobilenet_v2/{file}",
        weight_sizes=(96, 128, 160, 192, 224),
        variants=(("alpha", (1.0, 0.35, 0.5, 0.75, 1.3, 1.4)),),
        paper="Sandler et al. 2018, MobileNetV2",
    ),
    _mobilenet_v3("small", 11),
    _mobilenet_v3("large", 15),
    *(
        _file_spec(
            f"efficientnet_{v}", "EfficientNet", f"EfficientNet{v.upper()}",
            "efficientnet", size, "builtin", _efficientnet_groups(7),
            f"efficientnet{v}.h5", f"efficientnet{v}_notop.h5",
            "https://storage.googleapis.com/keras-applications/",
            top_hash=top, no_top_hash=no_top, paper="Tan & Le 2019, EfficientNet",
        )
        for v, (size, top, no_top) in _EFFICIENTNET.items()
    ),
    *(
        _file_spec(
            f"efficientnet_v2_{v}", "EfficientNetV2", f"EfficientNetV2{v.upper()}",
            "efficientnet_v2", size, "builtin", _efficientnet_groups(stages),
            f"efficientnetv2-{v}.h5", f"efficientnetv2-{v}_notop.h5",
            _KERAS_APPS + "efficientnet_v2/",
            top_hash=top, no_top_hash=no_top, paper="Tan & Le 2021, EfficientNetV2",
        )
        for v, (size, stages, top, no_top) in _EFFICIENTNET_V2.items()
    ),
    *(
        _file_spec(
            name.replace("v2", "_v2"), "ResNet" + ("V2" if "v2" in name else ""),
            constructor, "resnet_v2" if "v2" in name else "resnet", 224,
            "tf" if "v2" in name else "caffe", _resnet_groups(stages, "v2" in name),
            f"{name}_weights_tf_dim_ordering_tf_kernels.h5",
            f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
            _KERAS_APPS + "resnet/", top_hash=top, no_top_hash=no_top,
            paper="He et al. 2016, " + ("Identity Mappings" if "v2" in name else "ResNet"),
        )
        for name, (constructor, stages, top, no_top) in _RESNET.items()
    ),
    *(
        _file_spec(
            f"vgg{depth}", "VGG", f"VGG{depth}", f"vgg{depth}", 224, "caffe", _blocks("block", 5),
            f"vgg{depth}_weights_tf_dim_ordering_tf_kernels.h5",
            f"vgg{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5", _KERAS_APPS + f"vgg{depth}/",
            top_hash=top, no_top_hash=no_top, paper="Simonyan & Zisserman 2015, VGG",
        )
        for depth, (top, no_top) in _VGG.items()
    ),
    _file_spec(
        "inception_v3", "Inception", "InceptionV3", "inception_v3", 299, "tf",
        _blocks("mixed", 11, start=0, pattern="^{prefix}{i}$"),
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_APPS + "inception_v3/",
        top_hash="9a0d58056eeedaa3f26cb7ebd46da564",
        no_top_hash="bcbd6486424b2319ff4ef7d526e38f63",
        min_size=75, paper="Szegedy et al. 2016, Inception-v3",
    ),
    _file_spec(
        "inception_resnet_v2", "Inception", "InceptionResNetV2", "inception_resnet_v2",
        299, "tf",
        (
            ("mixed_5b", r"^mixed_5b$"), ("block35", r"^block35_"),
            ("mixed_6a", r"^mixed_6a$"), ("block17", r"^block17_"),
            ("mixed_7a", r"^mixed_7a$"), ("block8", r"^block8_"), ("top", r"^conv_7b"),
        ),
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_APPS + "inception_resnet_v2/",
        top_hash="e693bd0210a403b3192acc6073ad2e96",
        no_top_hash="d19885ff4a710c122648d3b5c3b684e4",
        min_size=75, paper="Szegedy et al. 2017, Inception-ResNet",
    ),
    _file_spec(
        "xception", "Xception", "Xception", "xception", 299, "tf",
        _blocks("block", 14),
        "xception_weights_tf_dim_ordering_tf_kernels.h5",
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_APPS + "xception/",
        top_hash="0a58e3b7378bc2990ea3b43d5981f1f6",
        no_top_hash="b0042744bf5b25fce3cb969f33bebb97",
        min_size=71, paper="Chollet 2017, Xception",
    ),
    *(
        _file_spec(
            f"densenet{depth}", "DenseNet", f"DenseNet{depth}", "densenet", 224, "torch",
            (
                ("stem", r"^(conv1|pool1)"),
                *((f"dense{s}", rf"^(conv{s}|pool{s})_") for s in (2, 3, 4)),
                ("dense5", r"^conv5_"),
                ("top", r"^(bn|relu)$"),
            ),
            f"densenet{depth}_weights_tf_dim_ordering_tf_kernels.h5",
            f"densenet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5",
            _KERAS_APPS + "densenet/", top_hash=top, no_top_hash=no_top,
            paper="Huang et al. 2017, DenseNet",
        )
        for depth, (top, no_top) in _DENSENET.items()
    ),
    _file_spec(
        "nasnet_mobile", "NASNet", "NASNetMobile", "nasnet", 224, "tf",
        _NASNET_MOBILE_GROUPS, "nasnet_mobile.h5", "nasnet_mobile_no_top.h5",
        _KERAS_APPS + "nasnet/",
        top_hash="020fb642bf7360b370c678b08e0adf61",
        no_top_hash="1ed92395b5b598bdda52abe5c0dbfd63",
        url_names=("NASNet-mobile.h5", "NASNet-mobile-no-top.h5"),
        paper="Zoph et al. 2018, NASNet",
    ),
    *(
        _file_spec(
            f"convnext_{size}", "ConvNeXt", f"ConvNeXt{size.capitalize()}", "convnext",
            224, "builtin",
            (("stem", r"_stem$"), *((f"stage_{s}", rf"_stage_{s}_") for s in range(4))),
            f"convnext_{size}.h5", f"convnext_{size}_notop.h5", _KERAS_APPS + "convnext/",
            top_hash=top, no_top_hash=no_top, paper="Liu et al. 2022, ConvNeXt",
        )
        for size, (top, no_top) in _CONVNEXT.items()
    ),
)

_ALIASES = {
    spec.constructor.lower(): spec.name for spec in _SPECS
} | {spec.name.replace("_", ""): spec.name for spec in _SPECS}

#: The built-in backbones.
#: TF-Hub (now Kaggle Models) ImageNet feature vectors of registry architectures, default variant,
#: TF2 SavedModels taking [0, 1] pixels at the entry's default size.
_HUB = {
    "mobilenet_v2": "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
    "mobilenet_v3_small": "https://tfhub.dev/google/imagenet/mobilenet_v3_small_100_224/feature_vector/5",
    "mobilenet_v3_large": "https://tfhub.dev/google/imagenet/mobilenet_v3_large_100_224/feature_vector/5",
    "efficientnet_b0": "https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1",
    "inception_v3": "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5",
    "resnet50_v2": "https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5",
}
_SPECS = tuple(replace(spec, hub_handle=_HUB[spec.name], hub_range="0,1") if spec.name in _HUB else spec
               for spec in _SPECS)

REGISTRY = Registry(_SPECS)


def get_backbone(name: str, registry: Registry = REGISTRY) -> BackboneSpec:
    """Look up a backbone by name.

    Args:
        name: Registry name (``"mobilenet_v2"``); Keras spellings such as
            ``"MobileNetV2"`` are accepted too.
        registry: Where to look. Defaults to the built-in :data:`REGISTRY`.

    Returns:
        The backbone's spec.

    Raises:
        UnknownBackboneError: With the closest names, for an unknown name.

    Example:
        >>> get_backbone("MobileNetV2").default_size
        224
    """
    return registry[name]


def list_backbones(registry: Registry = REGISTRY) -> list[BackboneSpec]:
    """All specs of ``registry`` in registry order."""
    return list(registry.values())
