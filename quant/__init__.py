"""Post-training weight quantization: packing format, RTN, GPTQ, AdaDim."""
from quant.gptq import gptq  # noqa: F401
from quant.hessian import (HessianState, hessian_from_inputs, hessian_init,  # noqa: F401
                           hessian_update)
from quant.qtensor import QuantizedWeight, dequantize, from_codes  # noqa: F401
from quant.quantizer import fake_quant, find_params, quantize, rtn  # noqa: F401
