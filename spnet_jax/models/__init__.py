"""Networks: DeepLab-v2 backbones, ASPP heads, MSC, conv rewrites; registry.py builds them."""
