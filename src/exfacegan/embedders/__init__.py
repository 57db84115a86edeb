"""Face embedders: images [N, 3, H, W] (uint8 or [-1, 1] RGB) -> L2-normalised float32 [N, embedding_dim]."""

from exfacegan.embedders.arcface import (
    IResNetEmbedder,
    load_iresnet_embedder,
    load_iresnet_state,
    random_iresnet_embedder,
    read_state_dict,
)
from exfacegan.embedders.iresnet import ARCHITECTURES, IBasicBlock, IResNet, iresnet
from exfacegan.embedders.onnx import OnnxEmbedder, load_onnx_embedder
from exfacegan.lazy import lazy_attributes

# dlib is imported only when its embedder is asked for.
__getattr__ = lazy_attributes(__name__, {"DlibEmbedder": "exfacegan.embedders.dlib_resnet"})

__all__ = [
    "ARCHITECTURES", "DlibEmbedder", "IBasicBlock", "IResNet", "IResNetEmbedder", "iresnet", "load_iresnet_embedder",
    "load_iresnet_state", "load_onnx_embedder", "OnnxEmbedder", "random_iresnet_embedder", "read_state_dict",
]
