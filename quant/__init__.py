"""Post-training weight quantization: packing format, RTN, GPTQ, AdaDim.

Weights are in Flax layout ``[in_features K, out_features N]``:

  qw = quant.rtn(w, bits=4, group_size=128, dim="oc")            # or dim="ic" (AdaDim)
  h = quant.hessian_from_inputs(x)                                # or hessian_init/update
  qw = quant.gptq(w, h, bits=4, group_size=128, dim="oc")
  w_hat = quant.dequantize(qw)                                    # shape and dtype of w
"""
from quant.gptq import gptq  # noqa: F401
from quant.hessian import (HessianState, hessian_from_inputs, hessian_init,  # noqa: F401
                           hessian_update)
from core.qtensor import QuantizedWeight, dequantize, from_codes  # noqa: F401
from quant.quantizer import fake_quant, find_params, quantize, rtn  # noqa: F401
