"""Post-training weight quantization: packing format, RTN, GPTQ, AdaDim."""
from quant.qtensor import QuantizedWeight, dequantize, from_codes  # noqa: F401
