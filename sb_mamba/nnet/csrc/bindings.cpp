// Python bindings of the sb_mamba CPU kernels (see kernels.h).
//
// Authors
// -------
//  * sb_mamba developers

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sb_mamba CPU kernels: selective scan and the fused Mamba inner path.";
  // The GIL is released while the kernels run (they touch no Python object).
  using release = py::call_guard<py::gil_scoped_release>;
  m.def("scan_fwd", &scan_fwd,
        "Selective scan forward -> (y, ckpt); x0: (b, d, N) initial state, or None for "
        "zeros; ckpt[:, :, -1] is the final state",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("Bt"), py::arg("Ct"),
        py::arg("chunk"), py::arg("x0") = py::none(), release());
  m.def("scan_bwd", &scan_bwd, "Selective scan backward -> (du, ddelta, dA, dBt, dCt)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("Bt"), py::arg("Ct"),
        py::arg("ckpt"), py::arg("gy"), py::arg("chunk"), release());
  m.def("conv_silu_fwd", &conv_silu_fwd,
        "out = silu(causal depthwise conv(x) + bias), (B, L, D); out may alias x; hist: "
        "(B, K - 1, D) rows before x in processing order, or None for zeros",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("reverse"),
        py::arg("hist") = py::none(), release());
  m.def("conv_silu_bwd", &conv_silu_bwd,
        "Backward of conv_silu_fwd; g (dLoss/dout) becomes dLoss/dx in place -> (dw, dbias)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("g"), py::arg("reverse"),
        release());
  m.def("mamba_scan_fwd", &mamba_scan_fwd,
        "Fused dt projection + softplus + selective scan + D skip + silu(z) gate into y "
        "(may alias u) -> checkpoints; state: (B, N, D) initial state, overwritten with the "
        "final one, or None for zeros",
        py::arg("u"), py::arg("z"), py::arg("xdbl"), py::arg("w_dt"), py::arg("dt_bias"),
        py::arg("A"), py::arg("D"), py::arg("y"), py::arg("reverse"), py::arg("chunk"),
        py::arg("save_ckpt"), py::arg("state") = py::none(), release());
  m.def("mamba_scan_bwd", &mamba_scan_bwd,
        "Backward of mamba_scan_fwd into gu, gz, gxdbl -> (dw_dt, ddt_bias, dA, dD)",
        py::arg("u"), py::arg("z"), py::arg("xdbl"), py::arg("w_dt"), py::arg("dt_bias"),
        py::arg("A"), py::arg("D"), py::arg("ckpt"), py::arg("gy"), py::arg("gu"),
        py::arg("gz"), py::arg("gxdbl"), py::arg("reverse"), py::arg("chunk"), release());
}
